"""SigLIP on the embedded shapes dataset: ``configs/clip_shapes.py`` with the sigmoid loss, computed
as a ring over the data-parallel devices (each holds only local x local logits), and SigLIP's
initial temperature 10 and bias -10.

    python -m mmjax.train --config=configs/siglip_shapes.py --workdir=runs/siglip_shapes
    python -m mmjax.train --config=configs/siglip_shapes.py:tiny --workdir=/tmp/s   # seconds, for tests
"""

from mmjax import config as config_lib

common = config_lib.import_beside(__file__, "common.py")
clip_shapes = config_lib.import_beside(__file__, "clip_shapes.py")


def get_config(arg=None):
    tiny = common.parse_arg(arg, allowed=dict(tiny=False), config_file=__file__).tiny
    c = clip_shapes.get_config("tiny" if tiny else None)
    c.loss = dict(kind="sigmoid", impl="ring")  # impl="gather": the same loss from gathered columns
    # one caption per image, no object head: the recipe its results were measured with (docs/results.md);
    # minimal-pair negatives are a softmax-loss option
    c.data.extra_short_caption, c.model.object_head = False, False
    c.model.temperature_init = 10.0  # SigLIP: t' = log 10
    c.model.bias_init = -10.0  # SigLIP: b = -10, so the many negatives start with a small loss
    # the 2-block text transformer its results were measured with (docs/results.md), not CLIP's bag of words
    if not tiny:
        c.model.text.update(depth=2, pool="eot")
    return c
