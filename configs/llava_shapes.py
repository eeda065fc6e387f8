"""Early fusion (LLaVA-style) on the embedded shapes dataset: the vision tower of the main job's CLIP,
an MLP projector and a small decoder LM, trained in two stages and evaluated on captioning and VQA.

    # stage 1: the projector alone learns to caption (vision tower and LM frozen)
    python -m mmjax.train --config=configs/llava_shapes.py:stage=1 --workdir=runs/llava_shapes_stage1
    # stage 2: projector + LM learn to answer questions (and keep captioning); vision tower frozen
    python -m mmjax.train --config=configs/llava_shapes.py:stage=2 --workdir=runs/llava_shapes
    # the two-image variant ("in the second image what colour is the star?"), from stage 2's weights
    python -m mmjax.train --config=configs/llava_shapes.py:stage=2,pairs --workdir=runs/llava_shapes_pairs
    # seconds, for tests: add ",tiny" (random vision tower unless init_from.workdir is given)
    python -m mmjax.train --config=configs/llava_shapes.py:stage=1,tiny --workdir=/tmp/s1

Stage 1 loads the vision tower from the CLIP run in ``runs/clip_shapes`` (the README's first command);
stage 2 loads everything from the stage-1 run. What is trained, frozen and loaded is only regexes over
parameter paths (``optimizer.freeze_regex``, ``init_from.regex``): there is no special code per stage.
"""

import os

import ml_collections

from mmjax import config as config_lib
from mmjax import models
from mmjax.models import lm as lm_lib


def _parse(arg):
    opts = {}
    for part in filter(None, (arg or "").split(",")):
        key, eq, value = part.partition("=")
        opts[key] = value if eq else True
    unknown = set(opts) - {"stage", "tiny", "pairs"}
    stage = opts.get("stage", "1")
    if unknown or stage not in ("1", "2") or (opts.get("pairs") and stage != "2"):
        raise ValueError(f"configs/llava_shapes.py: bad argument {arg!r}; use ':stage=1' or ':stage=2' "
                         "(or ':stage=2,pairs'), optionally with ',tiny'")
    return int(stage), bool(opts.get("tiny")), bool(opts.get("pairs"))


def get_config(arg=None):
    stage, tiny, pairs = _parse(arg)
    clip = config_lib.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_shapes.py") +
                                (":tiny" if tiny else ""))
    c = ml_collections.ConfigDict()
    c.task = "vlm"
    c.seed = 0
    c.total_steps = (6 if tiny else 150) if stage == 1 else (6 if tiny else 800)
    c.batch_size = 8 if tiny else 64
    c.log_every = 2 if tiny else 25
    c.checkpoint_every = 3 if tiny else 200
    c.keep_checkpoints = 2
    c.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    # attention kernel: "default" (JAX picks), "xla", or "cudnn" (GPU with bfloat16/float16; elsewhere
    # it falls back to the default with one warning). docs/performance.md measures them.
    c.attention = "default"

    c.model = models.model_config("llava-shapes")
    if tiny:  # the vision tower of configs/clip_shapes.py:tiny, so its checkpoint loads
        c.model.image.update(width=32, depth=1, num_heads=2, mlp_dim=64)
        c.model.lm = lm_lib.variant("lm-tiny", vocab_size=128)
    # Start from another run's weights: the parameters whose path matches init_from.regex are read from
    # the latest checkpoint in init_from.workdir (None: start from random weights).
    c.init_from = dict(workdir=None if tiny else "runs/clip_shapes", regex=(r"image/.*",))
    if stage == 2:
        c.init_from = dict(workdir=None if tiny else "runs/llava_shapes_stage1", regex=(r".*",))

    # The dataset of configs/clip_shapes.py (same sizes and tokenizer), laid out for generation.
    c.data = dict(clip.data)
    del c.data["hard_negatives"]
    c.data.update(
        # [BOS] + 16 image tokens + prompt + [SEP] + answer + [EOT]: the longest caption fits in 56;
        # 64 leaves room for 4-5 question turns
        max_len=64,
        caption_prompt="what is in the image",
        caption_prob=1.0 if stage == 1 else 0.15,  # the rest: questions about the image
        caption_sampling="canonical",
        vqa_turns=6,  # up to this many of the image's questions per row, as a conversation (as fit)
        images_per_example=1,  # 2: the two-image variant (pairs of scenes; questions name their image)
    )
    c.optimizer = dict(
        name="adamw", lr=1e-3, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0,
        warmup_steps=2 if tiny else 30, end_lr_factor=0.0, grad_clip_norm=1.0,
        weight_decay_regex=(r".*/kernel",),
        # stage 1: only the projector learns; stage 2: projector + LM (the vision tower stays frozen)
        freeze_regex=(r"image/.*", r"lm/.*") if stage == 1 else (r"image/.*",),
    )
    if pairs:  # two images per row, 2 x 16 image tokens: fine-tune the one-image model of stage 2
        c.data.update(images_per_example=2, max_len=80)
        c.total_steps = 6 if tiny else 400
        c.init_from = dict(workdir=None if tiny else "runs/llava_shapes", regex=(r".*",))
    c.mesh, c.sharding, c.distributed = clip.mesh, clip.sharding, clip.distributed
    # answer_tokens: the most tokens generated per answer (answers are one word + EOT)
    c.eval = dict(split="test", num_examples=64 if tiny else 1000, batch_size=64 if tiny else 256, answer_tokens=4)
    return c
