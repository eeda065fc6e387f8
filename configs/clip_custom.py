"""CLIP on your own image-caption data (prepared by python -m mmjax.prepare; docs/own_data.md). From
scratch (a ViT-B/16 image tower, a byte-level text tower), or fine-tuning an imported Hugging Face CLIP or
SigLIP (``:hf=DIR``: its architecture, tokenizer, image size, normalisation and weights).

    python -m mmjax.prepare --format=csv --input=pairs.csv --output=data/pairs
    python -m mmjax.train --config=configs/clip_custom.py --config.data.path=data/pairs --workdir=runs/own
    python -m mmjax.train --config=configs/clip_custom.py:hf=openai/clip-vit-base-patch32 \\
        --config.data.path=data/pairs --workdir=runs/own_ft
    python -m mmjax.train --config=configs/clip_custom.py:tiny --config.data.path=DIR --workdir=/tmp/c

(``:tiny``: a tiny model at 32 px for 20 steps, seconds, for tests.)
"""

import ml_collections

from mmjax import config as config_lib
from mmjax import models

common = config_lib.import_beside(__file__, "common.py")


def get_config(arg=None):
    opts = common.parse_arg(arg, allowed=dict(tiny=False, hf=""), config_file=__file__)
    tiny = opts.tiny
    c = ml_collections.ConfigDict()
    c.task = "contrastive"
    c.seed = 0
    c.total_steps = 20 if tiny else 10_000
    c.batch_size = 16 if tiny else 256
    c.log_every = 5 if tiny else 50
    c.checkpoint_every = 10 if tiny else 1000
    c.keep_checkpoints = 2
    c.nan_policy = "stop"
    c.dtype = "float32" if tiny else "bfloat16"  # compute dtype: bfloat16 on GPU/TPU
    c.attention = "default"
    c.init_from = dict(workdir=None, regex=())

    if opts.hf:
        c.model, fields, c.init_from = common.hf_model(opts.hf)
        c.data = common.prepared_data(tiny, **fields)
    else:
        c.model = models.model_config("clip-vit-b16")
        # UTF-8 bytes (any language, no vocabulary file): 261 ids; captions up to 126 bytes, then cut
        c.model.text.update(vocab_size=261, max_len=128, pool="eot")
        if tiny:
            c.model.update(image_size=32, embed_dim=32)
            c.model.image.update(common.tiny_tower(), patch_size=8)
            c.model.text.update(common.tiny_tower(), max_len=64)
        image_size = c.model.image_size
        c.data = common.prepared_data(
            tiny, image_size=image_size, tokenizer="bytes", max_len=c.model.text.max_len, normalization="clip"
        )
    c.model.temperature_init = c.model.get("temperature_init", 1 / 0.07)
    c.loss = dict(kind="softmax", impl="gather", negatives="all", short_negatives="all", short_weight=0.0)
    c.optimizer = common.adamw(
        lr=5e-4 if not opts.hf else 1e-5,  # from scratch: CLIP's; fine-tuning: small steps from the import
        eps=1e-6,
        weight_decay=0.2 if not opts.hf else 0.1,
        warmup_steps=5 if tiny else 500,
        weight_decay_regex=(r".*/kernel", r".*/embedding"),
    )
    c.mesh, c.sharding, c.distributed = common.mesh(), common.sharding(), common.distributed()
    # image<->text retrieval on the validation split; zero-shot too where the data names classes (imagefolder)
    c.eval = dict(
        split="validation",
        also_split=None,
        num_examples=1000 if not tiny else 64,
        batch_size=32 if tiny else 250,
    )
    return c
