"""Loaders: Grain training pipelines over a registered dataset's source, and whole splits for evaluation.

``train_loader`` is this process's share of the shuffled, augmented training batches (the design is in
``mmjax.data.pipeline``'s docstring); ``load_split`` and ``load_pairs`` read a split in order, unaugmented,
into memory for evaluation.
"""

from __future__ import annotations

import functools
import os

import grain
import numpy as np

from mmjax.data import images, registry
from mmjax.data.layout import images_per_example
from mmjax.data.tokenizer import Tokenizer
from mmjax.data.transforms import PairSource, _text, pair_partners, record_image, texts, train_preprocess


def _normalize_batch(batch: dict, normalization: str = "minus_one_one") -> dict:
    return {**batch, "image": images.normalize(batch["image"], normalization)}


def _ensure_absl_flags_parsed() -> None:
    from absl import flags  # lazy: only when Grain starts workers

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def train_loader(
    data_cfg,
    *,
    tokenizer: Tokenizer | None = None,
    global_batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    preprocess: grain.transforms.RandomMap | None = None,
) -> grain.IterDataset:
    """This process's share of the shuffled, augmented training batches; ``iter()`` it (see the module
    docstring). ``shard_index``/``shard_count`` default to ``jax.process_index()``/``jax.process_count()``.
    ``preprocess`` is the per-example transform of a record; default: the contrastive ``TrainPreprocess``
    built from ``data_cfg`` with ``tokenizer`` (``transforms.train_preprocess``; only it needs the
    tokenizer)."""
    if preprocess is None:
        if tokenizer is None:
            raise ValueError("train_loader needs a tokenizer or a preprocess transform")
        preprocess = train_preprocess(data_cfg, tokenizer)
    if shard_index is None or shard_count is None:
        import jax  # lazy: only to ask for the process index and count

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if global_batch_size % shard_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the number of "
            f"data shards (processes) {shard_count}"
        )
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside [0, shard_count={shard_count})")
    source = registry.data_source(data_cfg, "train")
    if images_per_example(data_cfg) == 2:
        source = PairSource(source)
    local_batch = global_batch_size // shard_count
    # The global order, the same on every process; lazy, so nothing is read until an index is asked for.
    ds = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(num_epochs)
        .random_map(preprocess, seed=seed)
    )
    ds = ds.batch(local_batch, drop_remainder=True)  # block k = rows [k * local_batch, (k + 1) * local_batch)
    ds = ds[: len(ds) // shard_count * shard_count]  # every process gets the same number of blocks
    ds = ds[shard_index::shard_count]  # this process's blocks: global batch t = blocks t*n .. t*n + n - 1
    # Each element is a batch: one reading thread per core (decoding is Python-heavy; more threads only
    # contend for the GIL), and a buffer of about 512 examples, as Grain's default of 500 elements was.
    threads = min(16, os.cpu_count() or 1)
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, -(-512 // local_batch)))
    )
    # uint8 -> float32 with the model's mean and std (data.normalization), per batch, in the workers if any
    normalization = images.check_normalization(data_cfg.get("normalization", "minus_one_one"))
    ds = ds.map(functools.partial(_normalize_batch, normalization=normalization))
    worker_count = data_cfg.get("worker_count", 0) or 0
    if worker_count > 0:  # workers prepare whole batches; which rows form a batch does not depend on them
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=data_cfg.get("worker_buffer_size", None) or 2
            )
        )
    return ds


def load_split(data_cfg, split: str, *, tokenizer: Tokenizer, max_examples: int | None = None) -> dict:
    """A whole split in memory, in order, unaugmented; ``text`` holds the canonical captions."""
    source = registry.data_source(data_cfg, split)
    n = len(source) if max_examples is None else min(max_examples, len(source))
    records = [source[i] for i in range(n)]
    captions = [texts(r, "captions", split) for r in records]
    canonical = [c[0] for c in captions]
    size, normalization = data_cfg.get("image_size", 64), data_cfg.get("normalization", "minus_one_one")
    # the evaluation view: as stored when already size x size (shapes), else data.eval_view ("center":
    # shortest side + centre crop, CLIP's; "resize": squashed, SigLIP's)
    view = data_cfg.get("eval_view", "center")
    views = [images.eval_view(record_image(r, split), size, view) for r in records]
    pixels = (
        np.stack([images.normalize(v, normalization) for v in views])
        if records
        else np.zeros((0, size, size, 3), np.float32)
    )
    return {
        "image": pixels,
        "text": tokenizer.tokenize(canonical, data_cfg.get("max_len", 32)),
        "caption": canonical,
        "captions": captions,
        "label": np.array([r["label"] for r in records], np.int32),
        "id": np.array([r["id"] for r in records], np.int32),
        # Captions-only datasets may leave these fields out: empty lists then.
        "questions": [[_text(q) for q in r.get("questions", ())] for r in records],
        "answers": [[_text(a) for a in r.get("answers", ())] for r in records],
        "question_types": [[_text(t) for t in r.get("question_types", ())] for r in records],
        "class_names": registry.class_names(data_cfg),
    }


def load_pairs(data_cfg, split: str, *, tokenizer: Tokenizer, max_examples: int | None = None) -> dict:
    """The two-image variant of ``load_split``: pair ``i`` is (example ``i``, example ``pair_partners(n)[i]``)
    of the split's first ``n`` examples; ``image`` is ``[n, 2, H, W, 3]``; its questions are both images'
    questions, each naming its image (the dataset's ``about_image``); its caption, prompt and references are
    those of image ``i % 2`` (``caption_prompt``, one per pair, e.g. "what is in the second image")."""
    about_image = registry.get_dataset(data_cfg).about_image
    if about_image is None:
        raise ValueError(
            f"dataset {data_cfg.get('name', 'shapes')!r} has no two-image examples (Dataset.about_image); "
            "use data.images_per_example=1"
        )
    data = load_split(data_cfg, split, tokenizer=tokenizer, max_examples=max_examples)
    n = len(data["caption"])
    pairs = np.stack([np.arange(n), pair_partners(n)], axis=1)
    both = lambda key, f: [[f(x, k) for k in (0, 1) for x in data[key][pairs[i, k]]] for i in range(n)]  # noqa: E731
    asked = pairs[np.arange(n), np.arange(n) % 2]
    return {
        **data,
        "image": data["image"][pairs],
        "pairs": pairs,
        "questions": both("questions", about_image),
        "answers": both("answers", lambda a, k: a),
        "question_types": both("question_types", lambda t, k: t),
        "caption_prompt": [about_image(data_cfg.caption_prompt, i % 2) for i in range(n)],
        "caption": [data["caption"][j] for j in asked],
        "captions": [data["captions"][j] for j in asked],
        "text": data["text"][asked],
        "label": data["label"][asked],
        "id": data["id"][asked],
    }
