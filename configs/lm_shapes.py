"""The fusion models' decoder LM alone, trained on the shapes dataset's text: the same rows as
``configs/llava_shapes.py`` (caption prompts and captions, conversations of questions and answers)
without the image. Two uses:

* a *blind baseline*: its VQA accuracy is what the questions alone give away;
* *LM pretraining*: ``configs/flamingo_shapes.py`` loads it (``init_from.also``) and keeps it frozen,
  as Flamingo keeps its pretrained LM frozen.

    python -m mmjax.train --config=configs/lm_shapes.py --workdir=runs/lm_shapes
    python -m mmjax.train --config=configs/lm_shapes.py:tiny --workdir=/tmp/lm   # seconds, for tests
"""

import os

from mmjax import config as config_lib
from mmjax import models
from mmjax.models import lm as lm_lib


def get_config(arg=None):
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/lm_shapes.py: unknown argument {arg!r}; use no argument or ':tiny'")
    tiny = arg == "tiny"
    llava = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llava_shapes.py")
    c = config_lib.load_file(llava + (":stage=2,tiny" if tiny else ":stage=2"))
    c.model = models.model_config("lm-shapes")
    if tiny:
        c.model.lm = lm_lib.variant("lm-tiny", vocab_size=128)
    c.total_steps = 6 if tiny else 500
    c.init_from = dict(workdir=None, regex=())
    c.optimizer.freeze_regex = ()
    c.data.caption_prob = 0.3  # more caption text: the LM should know the captions' language
    return c
