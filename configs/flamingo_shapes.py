"""Deep fusion (Flamingo-style) on the embedded shapes dataset: the vision tower of the main job's CLIP,
a perceiver resampler (8 visual tokens per image) and gated cross-attention before every LM layer,
on the same captioning/VQA data, metrics and LM size as ``configs/llava_shapes.py``.

    python -m mmjax.train --config=configs/flamingo_shapes.py --workdir=runs/flamingo_shapes
    python -m mmjax.train --config=configs/flamingo_shapes.py:tiny --workdir=/tmp/f   # seconds, for tests
    # two images per example, questions about one of them ("in the second image what colour is ..."),
    # starting from the one-image run's resampler and blocks
    python -m mmjax.train --config=configs/flamingo_shapes.py:pairs --workdir=runs/flamingo_shapes_pairs
    # not Flamingo's frozen LM: the LM trained from random weights with the rest, the blind LM's prior
    # explained away, grid positions, independent turns, balanced questions (docs/vqa_learning.md, section 8)
    python -m mmjax.train --config=configs/flamingo_shapes.py:trained_lm --workdir=runs/flamingo_shapes_lm

As in Flamingo, the vision tower and the LM are frozen (``optimizer.freeze_regex``); the resampler, the
gated cross-attention blocks and the new tokens' embeddings learn. The gates start at 0, so training
starts from the bare LM. The frozen parts come from earlier runs (``init_from``): the vision tower
from the main job (``runs/clip_shapes``), the LM from ``configs/lm_shapes.py`` (``runs/lm_shapes``):

    python -m mmjax.train --config=configs/lm_shapes.py --workdir=runs/lm_shapes
"""

import ml_collections

from mmjax import config as config_lib
from mmjax import models

common = config_lib.import_beside(__file__, "common.py")


def get_config(arg=None):
    opts = common.parse_arg(
        arg, allowed=dict(tiny=False, pairs=False, trained_lm=False), config_file=__file__
    )
    tiny, pairs, trained_lm = opts.tiny, opts.pairs, opts.trained_lm
    c = ml_collections.ConfigDict()
    c.task = "vlm"
    c.seed = 0
    # a step costs ~1.6x early fusion's (cross-attention in every block): fewer steps than
    # configs/llava_shapes.py:stage=2 in the same time
    c.total_steps = 6 if tiny else (400 if pairs else 800)
    c.batch_size = 8 if tiny else 64
    c.log_every = 2 if tiny else 25
    c.checkpoint_every = 3 if tiny else 200
    c.keep_checkpoints = 2
    c.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.attention = "default"  # attention kernel: "default", "xla" or "cudnn" (configs/llava_shapes.py)

    c.model = models.model_config("flamingo-shapes")
    if tiny:  # the vision tower of configs/clip_shapes.py:tiny and the tiny LM, as in llava_shapes
        c.model.image.update(common.tiny_tower())
        c.model.lm = common.tiny_lm()
    # the vision tower from the main job's CLIP, the LM from configs/lm_shapes.py (text-only pretraining)
    c.init_from = dict(
        workdir=None if tiny else "runs/clip_shapes",
        regex=(r"image/.*",),
        also=() if tiny else (("runs/lm_shapes", (r"lm/.*",)),),
    )
    # the rows, optimizer and evaluation of configs/llava_shapes.py:stage=2; the vision tower and LM frozen
    c.data = common.vlm_data(tiny, caption_prob=0.15)
    c.optimizer = common.vlm_adamw(tiny, freeze_regex=(r"image/.*", r"lm/.*"))
    c.loss = common.vlm_loss()
    if trained_lm:  # early fusion's recipe for deep fusion: the LM learns too, from random weights
        c.model.update(grid_pos_embed=True, grid_pos_std=1.0, turns="independent")
        c.init_from.also = ()
        c.optimizer.freeze_regex = (r"image/.*",)
        c.loss = common.vlm_loss(prior_from=None if tiny else "runs/lm_shapes")
        c.data.vqa_questions = "balanced"
    if pairs:  # two images per row; the text names the one it asks about, so it must see both
        c.data.images_per_example = 2
        c.model.update(only_attend_immediate_media=False, max_images=2)
        if not tiny:  # and the resampler, blocks and new tokens of the one-image run
            parts = (r"resampler/.*", r"xattn_\d+/.*", r"new_token_embed")
            if trained_lm:  # the one-image run of the same variant, its LM and grid positions too
                parts += (r"lm/.*", r"grid_pos/.*")
            c.init_from.also += (
                ("runs/flamingo_shapes_lm" if trained_lm else "runs/flamingo_shapes", parts),
            )
    c.mesh, c.sharding, c.distributed = common.mesh(), common.sharding(), common.distributed()
    c.eval = common.vlm_eval(tiny)
    return c
