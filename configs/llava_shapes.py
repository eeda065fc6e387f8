"""Early fusion (LLaVA-style) on the embedded shapes dataset: the vision tower of the main job's CLIP,
an MLP projector and a small decoder LM, trained in two stages and evaluated on captioning and VQA.

    # stage 1: the projector alone learns to caption (vision tower and LM frozen)
    python -m mmjax.train --config=configs/llava_shapes.py:stage=1 --workdir=runs/llava_shapes_stage1
    # stage 2: projector + LM learn to answer questions (and keep captioning); vision tower frozen
    python -m mmjax.train --config=configs/llava_shapes.py:stage=2 --workdir=runs/llava_shapes
    # seconds, for tests: add ",tiny" (random vision tower unless init_from.workdir is given)
    python -m mmjax.train --config=configs/llava_shapes.py:stage=1,tiny --workdir=/tmp/s1

Stage 1 loads the vision tower from the CLIP run in ``runs/clip_shapes`` (the README's first command);
stage 2 loads everything from the stage-1 run. What is trained, frozen and loaded is only regexes over
parameter paths (``optimizer.freeze_regex``, ``init_from.regex``): there is no special code per stage.
"""

import ml_collections

from mmjax import models
from mmjax.models import lm as lm_lib


def _parse(arg):
    opts = {}
    for part in filter(None, (arg or "").split(",")):
        key, eq, value = part.partition("=")
        opts[key] = value if eq else True
    unknown = set(opts) - {"stage", "tiny"}
    if unknown or opts.get("stage", "1") not in ("1", "2"):
        raise ValueError(f"configs/llava_shapes.py: bad argument {arg!r}; use ':stage=1' or ':stage=2', "
                         "optionally with ',tiny'")
    return int(opts.get("stage", "1")), bool(opts.get("tiny"))


def get_config(arg=None):
    stage, tiny = _parse(arg)
    c = ml_collections.ConfigDict()
    c.task = "vlm"
    c.seed = 0
    c.total_steps = (6 if tiny else 150) if stage == 1 else (6 if tiny else 800)
    c.batch_size = 8 if tiny else 64
    c.log_every = 2 if tiny else 25
    c.checkpoint_every = 3 if tiny else 200
    c.keep_checkpoints = 2
    c.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU

    c.model = models.model_config("llava-shapes")
    if tiny:  # the vision tower of configs/clip_shapes.py:tiny, so its checkpoint loads
        c.model.image.update(width=32, depth=1, num_heads=2, mlp_dim=64)
        c.model.lm = lm_lib.variant("lm-tiny", vocab_size=128)
    # Start from another run's weights: the parameters whose path matches init_from.regex are read from
    # the latest checkpoint in init_from.workdir (None: start from random weights).
    c.init_from = dict(workdir=None if tiny else "runs/clip_shapes", regex=(r"image/.*",))
    if stage == 2:
        c.init_from = dict(workdir=None if tiny else "runs/llava_shapes_stage1", regex=(r".*",))

    c.data = dict(
        name="shapes",
        data_dir=None,  # None: $MMJAX_DATA_DIR or ~/.cache/mmjax/tensorflow_datasets
        seed=0,
        image_size=64,
        num_train=512 if tiny else 20000,
        num_validation=64 if tiny else 1000,
        num_test=64 if tiny else 1000,
        tokenizer="shapes_words",
        # [BOS] + 16 image tokens + prompt + [SEP] + answer + [EOT]: the longest caption fits in 56
        max_len=56,
        flip_prob=0.5,
        caption_prompt="what is in the image",
        caption_prob=1.0 if stage == 1 else 0.25,  # the rest: one of the image's questions
        caption_sampling="canonical",
        worker_count=0,
    )
    c.optimizer = dict(
        name="adamw", lr=1e-3, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0,
        warmup_steps=2 if tiny else 30, end_lr_factor=0.0, grad_clip_norm=1.0,
        weight_decay_regex=(r".*/kernel",),
        # stage 1: only the projector learns; stage 2: projector + LM (the vision tower stays frozen)
        freeze_regex=(r"image/.*", r"lm/.*") if stage == 1 else (r"image/.*",),
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding = dict(strategy="dp", rules=())
    # answer_tokens: the most tokens generated per answer (answers are one word + EOT)
    c.eval = dict(split="test", num_examples=64 if tiny else 500, batch_size=64 if tiny else 256, answer_tokens=4)
    c.distributed = dict(coordinator_address=None, num_processes=None, process_id=None)
    return c
