"""Early fusion (LLaVA-style) on the embedded shapes dataset: the vision tower of the main job's CLIP,
an MLP projector and a small decoder LM, trained in two stages and evaluated on captioning and VQA.

    # first, the blind LM whose prior stage 1 and 2 explain away (loss.prior_from; ~170 s)
    python -m mmjax.train --config=configs/lm_shapes.py --workdir=runs/lm_shapes
    # stage 1: the projector alone learns to caption (vision tower and LM frozen)
    python -m mmjax.train --config=configs/llava_shapes.py:stage=1 --workdir=runs/llava_shapes_stage1
    # stage 2: projector + LM learn to answer questions (and keep captioning); vision tower frozen
    python -m mmjax.train --config=configs/llava_shapes.py:stage=2 --workdir=runs/llava_shapes
    # the two-image variant ("in the second image what colour is the star?"), from stage 2's weights
    python -m mmjax.train --config=configs/llava_shapes.py:stage=2,pairs --workdir=runs/llava_shapes_pairs
    # seconds, for tests: add ",tiny" (random vision tower unless init_from.workdir is given)
    python -m mmjax.train --config=configs/llava_shapes.py:stage=1,tiny --workdir=/tmp/s1

Stage 1 loads the vision tower from the CLIP run in ``runs/clip_shapes`` (the README's first command);
stage 2 loads everything from the stage-1 run. (The LM of stage 1 is still random, so stage 1 only
starts the projector: its own captions score BLEU-4 ~0; docs/vqa_learning.md, section 7.) What is
trained, frozen and loaded is only regexes over parameter paths (``optimizer.freeze_regex``,
``init_from.regex``): there is no special code per stage.
"""

import ml_collections

from mmjax import config as config_lib
from mmjax import models

common = config_lib.import_beside(__file__, "common.py")


def get_config(arg=None):
    opts = common.parse_arg(arg, allowed=dict(stage=(1, 2), tiny=False, pairs=False), config_file=__file__)
    stage, tiny, pairs = opts.stage, opts.tiny, opts.pairs
    if pairs and stage != 2:
        raise config_lib.ConfigError(
            f"configs/llava_shapes.py: argument {arg!r}: 'pairs' needs 'stage=2', "
            "whose weights it starts from: use ':stage=2,pairs'"
        )
    c = ml_collections.ConfigDict()
    c.task = "vlm"
    c.seed = 0
    # stage 2's steps: with configs/lm_shapes.py (~170 s) and stage 1 within 10 minutes on 2 CPU cores
    c.total_steps = (6 if tiny else 150) if stage == 1 else (6 if tiny else 1250)
    c.batch_size = 8 if tiny else 64
    c.log_every = 2 if tiny else 25
    c.checkpoint_every = 3 if tiny else 200
    c.keep_checkpoints = 2
    c.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    # attention kernel: "default" (JAX picks), "xla", or "cudnn" (GPU with bfloat16/float16; elsewhere
    # it falls back to the default with one warning). docs/performance.md measures them.
    c.attention = "default"

    c.model = models.model_config("llava-shapes")
    # what docs/vqa_learning.md measured to help: a causal mask (training turns see the image as generation
    # does), a learned position vector per image token at the tokens' own scale (a CLIP tower's tokens
    # barely say where they are), a row's turns independent of each other (no answer read off an earlier
    # turn's words), 2 x 2 patches side by side into a linear projector (not averaged: a small object
    # keeps its own features)
    c.model.update(
        attn_mask="causal",
        grid_pos_embed=True,
        grid_pos_std=1.0,
        turns="independent",
        image_pool_op="concat",
        projector="linear",
    )
    if tiny:  # the vision tower of configs/clip_shapes.py:tiny, so its checkpoint loads
        c.model.image.update(common.tiny_tower())
        c.model.lm = common.tiny_lm()
    # Start from another run's weights: the parameters whose path matches init_from.regex are read from
    # the latest checkpoint in init_from.workdir (None: start from random weights).
    # (``also``: further (workdir, regexes) pairs, e.g. the LM of another run)
    c.init_from = dict(workdir=None if tiny else "runs/clip_shapes", regex=(r"image/.*",), also=())
    if stage == 2:
        c.init_from = dict(workdir=None if tiny else "runs/llava_shapes_stage1", regex=(r".*",), also=())

    # The dataset of configs/clip_shapes.py (same sizes and tokenizer), laid out for generation.
    c.data = common.vlm_data(tiny, caption_prob=1.0 if stage == 1 else 0.15)
    # every object's questions, less those whose other objects give the answer away by a pair the
    # training split never shows (shapes.pair_shortcut; docs/vqa_learning.md, section 8)
    c.data.vqa_questions = "balanced"
    # stage 1: only the projector learns; stage 2: projector + LM (the vision tower stays frozen)
    frozen = (r"image/.*", r"lm/.*") if stage == 1 else (r"image/.*",)
    c.optimizer = common.vlm_adamw(tiny, freeze_regex=frozen)
    # the blind LM's prior on colour and shape answers explained away in training (a product of experts):
    # configs/lm_shapes.py trains it (runs/lm_shapes), before stage 1
    c.loss = common.vlm_loss(prior_from=None if tiny else "runs/lm_shapes")
    if pairs:  # two images per row, 2 x 16 image tokens: fine-tune the one-image model of stage 2
        c.data.update(images_per_example=2, max_len=80)
        c.total_steps = 6 if tiny else 400
        c.init_from = dict(workdir=None if tiny else "runs/llava_shapes", regex=(r".*",))
    c.mesh, c.sharding, c.distributed = common.mesh(), common.sharding(), common.distributed()
    c.eval = common.vlm_eval(tiny)
    return c
