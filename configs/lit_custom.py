"""LiT, locked-image tuning (Zhai and others, CVPR 2022), on your own data: a pretrained image tower, locked,
and a text tower trained to meet it, on a dataset prepared by ``python -m mmjax.prepare``.
``configs/clip_custom.py`` with the image tower and its projection frozen and loaded from a Hugging Face
CLIP/SigLIP (``:hf=DIR``, the text tower starting from the import too) or from an mmjax run
(``:run=WORKDIR``, e.g. a ``clip_custom`` run; the text tower starts from scratch).

    python -m mmjax.train --config=configs/lit_custom.py:hf=openai/clip-vit-base-patch32 \\
        --config.data.path=data/pairs --workdir=runs/lit
    python -m mmjax.train --config=configs/lit_custom.py:tiny,run=/tmp/c --config.data.path=DIR \\
        --workdir=/tmp/l
"""

from mmjax import config as config_lib
from mmjax.config import ConfigError

common = config_lib.import_beside(__file__, "common.py")
clip_custom = config_lib.import_beside(__file__, "clip_custom.py")

# the image tower and its projection into the shared space: what LiT locks
IMAGE_TOWER = (r"image/.*", r"image_proj/.*")


def get_config(arg=None):
    opts = common.parse_arg(arg, allowed=dict(tiny=False, hf="", run=""), config_file=__file__)
    if bool(opts.hf) == bool(opts.run):
        raise ConfigError(
            "configs/lit_custom.py locks a pretrained image tower: give it one, ':hf=DIR' (a Hugging Face "
            "CLIP or SigLIP) or ':run=WORKDIR' (an mmjax run), not both"
        )
    c = clip_custom.get_config(
        ",".join(p for p in ("tiny" if opts.tiny else "", f"hf={opts.hf}" if opts.hf else "") if p)
    )
    if opts.run:
        c.init_from = dict(workdir=opts.run, regex=IMAGE_TOWER)
    c.optimizer.freeze_regex = IMAGE_TOWER
    if not opts.hf:
        c.optimizer.lr = 1e-3 if opts.tiny else 5e-4  # a text tower from scratch
    return c
