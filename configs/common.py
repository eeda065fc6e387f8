"""Pieces the configs in ``configs/`` share, as functions a config calls: nothing is inherited, so each
config reads top to bottom. A config imports this file with

    from mmjax import config as config_lib
    common = config_lib.import_beside(__file__, "common.py")

(configs are loaded by file path, not as a package). This file is not a config: it has no get_config,
and ``python -m mmjax.train --help`` does not list it.

* ``parse_arg``: the one parser of a config's argument (``--config=configs/x.py:stage=2,tiny``);
* the blocks every run has: ``mesh``, ``sharding``, ``distributed``;
* the embedded shapes dataset (``shapes_data``) and the captioning/VQA rows the fusion configs train on
  (``vlm_data``), their optimizer (``vlm_adamw``) and evaluation (``vlm_eval``); ``adamw`` for all;
* a user's own data (``prepared_data``, from ``python -m mmjax.prepare``) and an imported Hugging Face
  model to fine-tune on it (``hf_model``);
* the tiny towers of the seconds-long test variants (``tiny_tower``, ``tiny_lm``).
"""

import os
import types

from mmjax.config import ConfigError
from mmjax.models import lm as lm_lib


# ----------------------------------------------------------------------------------- the argument
def parse_arg(arg, *, allowed, config_file):
    """The options in a config's argument: comma-separated flags (``tiny``) and ``key=value`` pairs
    (``stage=2``), in any order; ``None`` or ``""`` gives every option its default.

    Args:
      arg: the text after ``:`` in ``--config=configs/x.py:ARG`` (``get_config``'s argument), or None.
      allowed: ``{name: default}``. A default of ``False`` makes ``name`` a flag, True when given; a tuple
        lists the values ``name=VALUE`` may take, of one type, its first the default: ``stage=(1, 2)``; a
        string default (e.g. ``""``) takes any text: ``hf=/path/to/model`` (no commas).
      config_file: the config's ``__file__``, named in the error.

    Returns:
      A namespace with one attribute per allowed name: ``opts.tiny``, ``opts.stage``.

    Raises:
      ConfigError: one line naming the part not allowed and the forms that are.
    """
    opts = {name: default[0] if isinstance(default, tuple) else default for name, default in allowed.items()}
    for part in filter(None, (arg or "").split(",")):
        name, eq, text = part.partition("=")
        choices = allowed.get(name)
        if choices is False and not eq:
            opts[name] = True
        elif isinstance(choices, tuple) and eq and text in [str(v) for v in choices]:
            opts[name] = type(choices[0])(text)
        elif isinstance(choices, str) and eq and text:
            opts[name] = text
        else:
            raise ConfigError(f"{_display_name(config_file)}: unknown argument {part!r}; {_usage(allowed)}")
    return types.SimpleNamespace(**opts)


def _display_name(config_file):
    """``configs/clip_shapes.py``: the file and its directory, wherever it was loaded from."""
    path = os.path.abspath(config_file)
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def _form(name, default):
    if default is False:
        return name
    if isinstance(default, str):
        return f"{name}=TEXT"
    return f"{name}={'|'.join(map(str, default))}"


def _usage(allowed):
    forms = [_form(name, default) for name, default in allowed.items()]
    if len(forms) == 1:
        return f"use no argument or ':{forms[0]}'"
    return "use no argument or a comma-separated list of " + ", ".join(f"'{f}'" for f in forms)


# ------------------------------------------------------------------------- blocks every run has
def mesh():
    """Devices along each mesh axis (-1: the rest)."""
    return dict(data=-1, fsdp=1, tensor=1)


def sharding():
    """A strategy: dp | fsdp | tp | fsdp_tp, or custom logical rules, e.g.
    ``rules=[("batch", ("data", "fsdp")), ("embed", "fsdp")]`` (docs/sharding/)."""
    return dict(strategy="dp", rules=())


def distributed():
    """Multi-host: HOST:PORT of process 0, the number of processes and this one's id (0 ..). None: from
    $MMJAX_COORDINATOR_ADDRESS, $MMJAX_NUM_PROCESSES, $MMJAX_PROCESS_ID, found by JAX on Cloud TPU, else
    one process. See mmjax/distributed.py."""
    return dict(coordinator_address=None, num_processes=None, process_id=None)


def adamw(
    *,
    lr,
    warmup_steps,
    eps,
    weight_decay,
    weight_decay_regex,
    freeze_regex=(),
    b1=0.9,
    b2=0.98,
    end_lr_factor=0.0,
    grad_clip_norm=1.0,
):
    """AdamW with linear warmup and cosine decay to ``end_lr_factor * lr``, gradients clipped to a global
    norm (mmjax/optimizer.py). Weight decay applies to the parameters whose path matches a regex of
    ``weight_decay_regex``; those matching ``freeze_regex`` do not learn."""
    return dict(
        name="adamw",
        lr=lr,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        end_lr_factor=end_lr_factor,
        grad_clip_norm=grad_clip_norm,
        weight_decay_regex=weight_decay_regex,
        freeze_regex=freeze_regex,
    )


# ------------------------------------------------------------------------------------- the data
def shapes_data(tiny, **fields):
    """The embedded shapes dataset (64x64 scenes), the same scenes, splits and tokenizer in every config;
    ``fields``: the task's own keys (text length, augmentation, what a row holds)."""
    return dict(
        name="shapes",
        data_dir=None,  # None: $MMJAX_DATA_DIR or ~/.cache/mmjax/tensorflow_datasets
        seed=0,
        image_size=64,
        num_train=512 if tiny else 20000,
        num_validation=64 if tiny else 1000,
        num_test=64 if tiny else 1000,
        tokenizer="shapes_words",
        worker_count=0,
        **fields,
    )


def prepared_data(tiny, *, image_size, tokenizer, max_len, normalization, eval_view="center"):
    """A dataset written by ``python -m mmjax.prepare`` (set ``data.path``): images of any size cropped to
    ``image_size`` (training: open_clip's random resized crop, scale 0.9-1; evaluation: shortest side and
    centre crop), normalised as the model expects, no flips (captions may name left and right)."""
    return dict(
        name="prepared",  # or a TFDS catalog dataset by name, e.g. "coco_captions" (docs/catalog_datasets.md)
        path=None,  # the --output folder of python -m mmjax.prepare
        data_dir=None,  # a catalog dataset's TFDS data_dir (local or gs://); None: TFDS's default
        image_size=image_size,
        crop="random_resized",
        crop_scale=(0.9, 1.0),
        eval_view=eval_view,  # evaluation: "center" (shortest side, centre crop: CLIP), "resize" (SigLIP)
        normalization=normalization,
        tokenizer=tokenizer,
        max_len=max_len,
        flip_prob=0.0,
        caption_sampling="random",
        hard_negatives=False,
        short_caption_prob=0.0,
        extra_short_caption=False,
        worker_count=0 if tiny else 4,  # Grain processes decoding JPEGs
    )


def hf_model(directory):
    """``(model, data fields, init_from)`` for fine-tuning the Hugging Face CLIP or SigLIP in ``directory``
    (or a Hub id):
    its architecture (``config.json``), tokenizer (``tokenizer.json``), image size and normalisation
    (``preprocessor_config.json``), and its weights loaded when the run starts."""
    from mmjax.data import images  # lazy: configs load without the data stack until they need it
    from mmjax.interop import hf, hub, preprocess

    directory = hub.resolve(directory)  # a Hub id: its snapshot in the cache (every host reads the same)
    model = hf.read_model_config(directory)
    processor = preprocess.processor_config(directory)
    mean, std = tuple(processor.get("image_mean", (0.5,) * 3)), tuple(processor.get("image_std", (0.5,) * 3))
    names = [
        n
        for n, ms in images.NORMALIZATIONS.items()
        if all(abs(a - b) < 1e-4 for a, b in zip(ms[0] + ms[1], mean + std))
    ]
    if not names:
        raise ConfigError(
            f"{directory}: preprocessor_config.json's image_mean {mean} and image_std {std} are none of "
            f"mmjax's normalizations ({', '.join(images.NORMALIZATIONS)}); add yours to mmjax/data/images.py"
        )
    # SigLIP's processor squashes the image to its size (no centre crop): evaluate with the same view
    squash = not processor.get("do_center_crop", False) and "height" in (processor.get("size") or {})
    data = dict(
        eval_view="resize" if squash else "center",
        image_size=model.image_size,
        tokenizer=f"hf:{directory}",
        max_len=model.text.max_len,
        normalization=names[-1],
    )
    init_from = dict(workdir=None, regex=(), hf=directory, hf_regex=(".*",))
    return model, data, init_from


def vlm_data(tiny, *, caption_prob, images_per_example=1, max_len=64):
    """The fusion configs' rows (llava, flamingo, lm): captions after a prompt, and conversations of
    questions and answers about the image, laid out for generation."""
    return shapes_data(
        tiny,
        # [BOS] + 16 image tokens + prompt + [SEP] + answer + [EOT]: the longest caption fits in 56;
        # 64 leaves room for 4-5 question turns
        max_len=max_len,
        flip_prob=0.5,
        caption_prompt="what is in the image",
        caption_prob=caption_prob,  # the rest: questions about the image
        caption_sampling="canonical",
        vqa_turns=6,  # up to this many of the image's questions per row, as a conversation (as fit)
        vqa_questions="stored",  # "all": every object's colour, shape and relations; "balanced": no shortcuts
        vqa_side_questions=False,  # with "all"/"balanced": also every object's side ("on the left?")
        images_per_example=images_per_example,  # 2: pairs of scenes; questions name their image
    )


def vlm_adamw(tiny, *, freeze_regex):
    """The fusion configs' optimizer; ``freeze_regex`` says which towers stay as loaded."""
    return adamw(
        lr=1e-3,
        eps=1e-8,
        weight_decay=0.0,
        warmup_steps=2 if tiny else 30,
        weight_decay_regex=(r".*/kernel",),
        freeze_regex=freeze_regex,
    )


def vlm_loss(prior_from=None):
    """The fusion configs' loss options: ``prior_from`` a blind LM's run (``configs/lm_shapes.py``) whose
    log-probabilities are added to the model's in training (a product of experts: the question's own
    prior is explained away, mmjax/tasks.py VlmTask), times ``prior_weight``; None: the plain loss.
    ``prior_groups``: the colour words and the shape words, so that the prior only explains the choice of
    colour or shape (mmjax/tasks.py VlmTask): what the held-out pairs' absence teaches. Experimental
    (docs/vqa_learning.md): over the whole vocabulary (``prior_groups=()``) VQA falls from 70.1 to 4.8 %
    (the prior explains the answers' form, which the model alone then never learns); with yes/no as a
    group too, exists and position questions fall to 50-53 % (the model alone loses the base rates the
    prior explained). With the colour and shape groups, test VQA rises from 74.0 to 78.9 % at 800 steps
    (configs/llava_shapes.py uses it)."""
    from mmjax.data import shapes

    groups = (shapes.COLOURS, shapes.SHAPES)
    return dict(prior_from=prior_from, prior_weight=1.0, prior_groups=tuple(" ".join(g) for g in groups))


def vlm_eval(tiny):
    """Captioning and VQA on the test split; answer_tokens: the most tokens generated per answer (answers
    are one word + EOT)."""
    return dict(
        split="test", num_examples=64 if tiny else 1000, batch_size=64 if tiny else 256, answer_tokens=4
    )


# ----------------------------------------------------------------------------- the tiny variants
def tiny_tower():
    """One block of width 32: the vision (and text) tower of ``configs/clip_shapes.py:tiny``, which the
    fusion configs' tiny variants share so that its checkpoint loads."""
    return dict(width=32, depth=1, num_heads=2, mlp_dim=64)


def tiny_lm():
    """The fusion configs' tiny decoder LM."""
    return lm_lib.variant("lm-tiny", vocab_size=128)
