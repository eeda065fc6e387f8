"""A small CLIP trained on the embedded shapes dataset (64x64 scenes), then evaluated zero-shot on
colour-shape combinations never seen in training.

    python -m mmjax.train --config=configs/clip_shapes.py --workdir=runs/clip_shapes
    python -m mmjax.train --config=configs/clip_shapes.py:tiny --workdir=/tmp/t   # seconds, for tests
"""

import ml_collections

from mmjax import config as config_lib
from mmjax import models

common = config_lib.import_beside(__file__, "common.py")


def get_config(arg=None):
    tiny = common.parse_arg(arg, allowed=dict(tiny=False), config_file=__file__).tiny
    c = ml_collections.ConfigDict()
    c.task = "contrastive"
    c.seed = 0
    c.total_steps = 20 if tiny else 500  # about 4 minutes on 2 CPU cores, the dataset build included
    c.batch_size = 32 if tiny else 128
    c.log_every = 5 if tiny else 25
    c.checkpoint_every = 10 if tiny else 200
    c.keep_checkpoints = 2
    # A non-finite loss or gradient: "stop" raises (the last checkpoint is the last good state), "skip"
    # leaves that step's update out and counts it as skipped_steps (docs/reliability.md).
    c.nan_policy = "stop"
    c.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU
    # attention kernel: "default" (JAX picks), "xla", or "cudnn" (GPU with bfloat16/float16; elsewhere
    # it falls back to the default with one warning). docs/performance.md measures them.
    c.attention = "default"

    c.model = models.model_config("clip-shapes")
    c.model.temperature_init = 1 / 0.07  # CLIP's initial logit scale (clipped at 100 in training)
    # The image tower's stem is colour-invariant with a separate colour path (model.image.stem_colour =
    # "split", mmjax/models/vit.py): a shape looks the same to it in every colour, so unseen colour-shape
    # pairs are named as well as seen ones: zero-shot on held-out pairs 57.0 -> 98.0 % (docs/learning.md,
    # section 8). "joint" is the plain first convolution.
    # A bag-of-words text tower: no transformer block, the mean of the word embeddings (then the final norm
    # and the projection). It tells shapes apart from the first step and composes unseen colour-shape pairs
    # from their words: zero-shot on held-out pairs 21.0 -> 26.6 %, i2t R@1 57.4 -> 59.6 % (docs/learning.md).
    c.model.text.update(depth=0, pool="mean")
    # A second image projection for texts naming one object (the short captions, the zero-shot prompts),
    # beside the one for whole-scene captions (mmjax/models/two_tower.py)
    c.model.object_head = True
    # What the whole-scene projection reads: "pooled" (the tower's mean token) or "tokens" (every patch
    # token, flattened: keeps where each object is, which captions name): i2t R@1 53 -> 90 %
    # (docs/learning.md)
    c.model.scene_pool = "tokens"
    # A wider joint space than the towers' 64: the same bilinear score, learned faster (seen-pair zero-shot
    # +11 to 13 points on two seeds, held-out +1 to 2; docs/learning.md)
    c.model.embed_dim = 128
    if tiny:
        c.model.image.update(common.tiny_tower())
        # one block, EOT pooling: the text tower the sharding, interop and export tests exercise
        c.model.text.update(common.tiny_tower(), pool="eot")
        c.model.embed_dim = 32

    # softmax (CLIP) loss; under a mesh each device scores its rows against all gathered columns.
    # Every image has two captions: one of its record's (whole-scene) captions and the one naming its main
    # object alone (data.extra_short_caption), each with its own loss, weighted 1 - short_weight and
    # short_weight. negatives / short_negatives: "all" (every other caption of the batch) or
    # "minimal_pairs" (a caption naming one object is contrasted only with those differing from it in
    # colour alone or in shape alone: mmjax/losses.py minimal_pair_mask). Minimal pairs for the short
    # captions keep the model from learning "red things are never circles" from the held-out pairs'
    # absence: held-out zero-shot 26.6 -> 53 %, i2t R@1 59.6 -> 52 % (docs/learning.md; short_weight=0.35:
    # 47 % and 56 %).
    c.loss = dict(
        kind="softmax", impl="gather", negatives="all", short_negatives="minimal_pairs", short_weight=0.5
    )
    c.data = common.shapes_data(
        tiny,
        max_len=32,
        flip_prob=0.5,
        caption_sampling="random",
        short_caption_prob=0.0,  # how often the caption is the one naming the main object alone instead
        extra_short_caption=True,  # also that caption, as a second text of every image (its own loss)
        # Per example, also its caption with one shape word swapped, as an extra negative text
        # (NegCLIP). Off: neutral in the 4-minute budget and 14 % slower (docs/results.md).
        hard_negatives=False,
    )
    c.optimizer = common.adamw(
        lr=2e-3,
        eps=1e-6,
        weight_decay=0.1,
        warmup_steps=5 if tiny else 50,
        # Decay matrices and embeddings only (not biases, norms, temperature), as in CLIP.
        weight_decay_regex=(r".*/kernel", r".*/embedding"),
    )
    # Devices per mesh axis, the sharding strategy, multi-host: see configs/common.py (docs/sharding/).
    c.mesh, c.sharding, c.distributed = common.mesh(), common.sharding(), common.distributed()
    # also_split: zero-shot on a second split too (validation: every pair seen in training), beside test
    c.eval = dict(split="test", also_split="validation", num_examples=1000, batch_size=32 if tiny else 250)
    return c
