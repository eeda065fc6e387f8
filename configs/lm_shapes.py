"""The fusion models' decoder LM alone, trained on the shapes dataset's text: the same rows as
``configs/llava_shapes.py`` (caption prompts and captions, conversations of questions and answers)
without the image. Two uses:

* a *blind baseline*: its VQA accuracy is what the questions alone give away;
* *LM pretraining*: ``configs/flamingo_shapes.py`` loads it (``init_from.also``) and keeps it frozen,
  as Flamingo keeps its pretrained LM frozen.

    python -m mmjax.train --config=configs/lm_shapes.py --workdir=runs/lm_shapes
    python -m mmjax.train --config=configs/lm_shapes.py:tiny --workdir=/tmp/lm   # seconds, for tests
"""

import ml_collections

from mmjax import config as config_lib
from mmjax import models

common = config_lib.import_beside(__file__, "common.py")


def get_config(arg=None):
    tiny = common.parse_arg(arg, allowed=dict(tiny=False), config_file=__file__).tiny
    c = ml_collections.ConfigDict()
    c.task = "vlm"
    c.seed = 0
    c.total_steps = 6 if tiny else 500
    c.batch_size = 8 if tiny else 64
    c.log_every = 2 if tiny else 25
    c.checkpoint_every = 3 if tiny else 200
    c.keep_checkpoints = 2
    c.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    c.attention = "default"  # attention kernel: "default", "xla" or "cudnn" (configs/llava_shapes.py)

    c.model = models.model_config("lm-shapes")
    if tiny:
        c.model.lm = common.tiny_lm()
    c.init_from = dict(workdir=None, regex=())  # from random weights
    # configs/llava_shapes.py:stage=2's rows, more of them captions: the LM should know the captions' language
    c.data = common.vlm_data(tiny, caption_prob=0.3)
    c.optimizer = common.vlm_adamw(tiny, freeze_regex=())
    c.mesh, c.sharding, c.distributed = common.mesh(), common.sharding(), common.distributed()
    c.eval = common.vlm_eval(tiny)
    return c
