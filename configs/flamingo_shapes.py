"""Deep fusion (Flamingo-style) on the embedded shapes dataset: the vision tower of the main job's CLIP,
a perceiver resampler (8 visual tokens per image) and gated cross-attention before every LM layer,
on the same captioning/VQA data, metrics and LM size as ``configs/llava_shapes.py``.

    python -m mmjax.train --config=configs/flamingo_shapes.py --workdir=runs/flamingo_shapes
    python -m mmjax.train --config=configs/flamingo_shapes.py:tiny --workdir=/tmp/f   # seconds, for tests
    # two images per example, questions about one of them ("in the second image what colour is ..."),
    # starting from the one-image run's resampler and blocks
    python -m mmjax.train --config=configs/flamingo_shapes.py:pairs --workdir=runs/flamingo_shapes_pairs

As in Flamingo, the vision tower and the LM are frozen (``optimizer.freeze_regex``); the resampler, the
gated cross-attention blocks and the new tokens' embeddings learn. The gates start at 0, so training
starts from the bare LM. The frozen parts come from earlier runs (``init_from``): the vision tower
from the main job (``runs/clip_shapes``), the LM from ``configs/lm_shapes.py`` (``runs/lm_shapes``):

    python -m mmjax.train --config=configs/lm_shapes.py --workdir=runs/lm_shapes
"""

import os

from mmjax import config as config_lib
from mmjax import models
from mmjax.models import lm as lm_lib


def get_config(arg=None):
    opts = set(filter(None, (arg or "").split(",")))
    if opts - {"tiny", "pairs"}:
        raise ValueError(f"configs/flamingo_shapes.py: unknown argument {arg!r}; use no argument, ':pairs', "
                         "':tiny' or ':pairs,tiny'")
    tiny, pairs = "tiny" in opts, "pairs" in opts
    llava = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llava_shapes.py")
    c = config_lib.load_file(llava + (":stage=2,tiny" if tiny else ":stage=2"))
    c.model = models.model_config("flamingo-shapes")
    if tiny:  # the vision tower of configs/clip_shapes.py:tiny and the tiny LM, as in llava_shapes
        c.model.image.update(width=32, depth=1, num_heads=2, mlp_dim=64)
        c.model.lm = lm_lib.variant("lm-tiny", vocab_size=128)
    # the vision tower from the main job's CLIP, the LM from configs/lm_shapes.py (text-only pretraining)
    c.init_from = dict(workdir=None if tiny else "runs/clip_shapes", regex=(r"image/.*",),
                       also=() if tiny else (("runs/lm_shapes", (r"lm/.*",)),))
    c.optimizer.freeze_regex = (r"image/.*", r"lm/.*")
    if pairs:  # two images per row; the text names the one it asks about, so it must see both
        c.data.images_per_example = 2
        c.model.update(only_attend_immediate_media=False, max_images=2)
        c.total_steps = 6 if tiny else 400
        if not tiny:  # and the resampler, blocks and new tokens of the one-image run
            c.init_from.also += (("runs/flamingo_shapes", (r"resampler/.*", r"xattn_\d+/.*", r"new_token_embed")),)
    return c
