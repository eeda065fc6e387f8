"""A small CLIP trained on the embedded shapes dataset (64x64 scenes), then evaluated zero-shot on
colour-shape combinations never seen in training.

    python -m mmjax.train --config=configs/clip_shapes.py --workdir=runs/clip_shapes
    python -m mmjax.train --config=configs/clip_shapes.py:tiny --workdir=/tmp/t   # seconds, for tests
"""

import ml_collections

from mmjax import models


def get_config(arg=None):
    tiny = arg == "tiny"
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/clip_shapes.py: unknown argument {arg!r}; use no argument or ':tiny'")
    c = ml_collections.ConfigDict()
    c.task = "contrastive"
    c.seed = 0
    c.total_steps = 20 if tiny else 650  # about 4 minutes on 2 CPU cores
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
    # A bag-of-words text tower: no transformer block, the mean of the word embeddings (then the final norm
    # and the projection). It tells shapes apart from the first step and composes unseen colour-shape pairs
    # from their words: zero-shot on held-out pairs 21.0 -> 26.6 %, i2t R@1 57.4 -> 59.6 % (docs/learning.md).
    c.model.text.update(depth=0, pool="mean")
    if tiny:
        c.model.image.update(width=32, depth=1, num_heads=2, mlp_dim=64)
        # one block, EOT pooling: the text tower the sharding, interop and export tests exercise
        c.model.text.update(width=32, depth=1, num_heads=2, mlp_dim=64, pool="eot")
        c.model.embed_dim = 32

    # softmax (CLIP) loss; under a mesh each device scores its rows against all gathered columns
    c.loss = dict(kind="softmax", impl="gather")
    c.data = dict(
        name="shapes",
        data_dir=None,  # None: $MMJAX_DATA_DIR or ~/.cache/mmjax/tensorflow_datasets
        seed=0,
        image_size=64,
        num_train=512 if tiny else 20000,
        num_validation=64 if tiny else 1000,
        num_test=64 if tiny else 1000,
        tokenizer="shapes_words",
        max_len=32,
        flip_prob=0.5,
        caption_sampling="random",
        # Per example, also its caption with one shape word swapped, as an extra negative text
        # (NegCLIP). Off: neutral in the 4-minute budget and 14 % slower (see README, "Results").
        hard_negatives=False,
        worker_count=0,
    )
    c.optimizer = dict(
        name="adamw", lr=2e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
        warmup_steps=5 if tiny else 50, end_lr_factor=0.0, grad_clip_norm=1.0,
        # Decay matrices and embeddings only (not biases, norms, temperature), as in CLIP.
        weight_decay_regex=(r".*/kernel", r".*/embedding"),
        freeze_regex=(),
    )
    # Devices along each mesh axis (-1: the rest) and a strategy: dp | fsdp | tp | fsdp_tp, or custom
    # logical rules, e.g. rules=[("batch", ("data", "fsdp")), ("embed", "fsdp")] (docs/sharding/).
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding = dict(strategy="dp", rules=())
    # also_split: zero-shot on a second split too (validation: every pair seen in training), beside test
    c.eval = dict(split="test", also_split="validation", num_examples=1000, batch_size=250 if not tiny else 32)
    # Multi-host: HOST:PORT of process 0, the number of processes and this one's id (0 ..). None: from
    # $MMJAX_COORDINATOR_ADDRESS, $MMJAX_NUM_PROCESSES, $MMJAX_PROCESS_ID, found by JAX on Cloud TPU,
    # else one process. See mmjax/distributed.py.
    c.distributed = dict(coordinator_address=None, num_processes=None, process_id=None)
    return c
