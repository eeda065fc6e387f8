"""SigLIP on the embedded shapes dataset: ``configs/clip_shapes.py`` with the sigmoid loss, computed
as a ring over the data-parallel devices (each holds only local x local logits), and SigLIP's
initial temperature 10 and bias -10.

    python -m mmjax.train --config=configs/siglip_shapes.py --workdir=runs/siglip_shapes
    python -m mmjax.train --config=configs/siglip_shapes.py:tiny --workdir=/tmp/s   # seconds, for tests
"""

import os

from mmjax import config as config_lib


def get_config(arg=None):
    clip = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_shapes.py")
    c = config_lib.load_file(clip + (f":{arg}" if arg else ""))
    c.loss = dict(kind="sigmoid", impl="ring")  # impl="gather": the same loss from gathered columns
    c.model.temperature_init = 10.0  # SigLIP: t' = log 10
    c.model.bias_init = -10.0  # SigLIP: b = -10, so the many negatives start with a small loss
    if not arg:  # the 2-block text transformer its results were measured with (README), not CLIP's bag of words
        c.model.text.update(depth=2, pool="eot")
    return c
