"""Grain input pipelines over TFDS array_record sources (no TensorFlow).

Datasets: ``data.name`` picks a registered ``Dataset`` (``DATASETS``; ``register_dataset(name, Dataset(...))``
or, lazily, ``register_dataset(name, "package.module:ATTRIBUTE")``): its random-access source of a split,
class names and zero-shot prompt templates. "shapes" is registered here. Only the main process consults the
registry: the per-example transforms below read records, and Grain pickles the built pipeline (source
included) into its workers, so a dataset registered at run time works with ``worker_count > 0`` too.

Training (``train_loader``) is a Grain dataset pipeline over ``builder.as_data_source("train")``, built
lazily on a ``MapDataset`` so that every process describes the same *global* sequence of examples but
reads only its own: ``MapDataset.source`` -> ``shuffle(seed)`` -> ``repeat(num_epochs)`` (infinite by
default; a new order each epoch) -> ``random_map`` (per example: decode the PNG, pick a caption --
'random': one of the K per example and epoch, 'canonical': caption 0; with probability
``short_caption_prob`` the dataset's caption naming the main object alone -- and flip left-right with
``flip_prob`` together with ``shapes.flip_text`` on the caption, then tokenize) -> ``batch`` into blocks of
the local batch ``global_batch_size // shard_count`` rows (drop remainder) -> process ``p`` of ``n`` keeps
blocks ``p, p + n, p + 2n, ...`` (``ds[p::n]``; every process the same number) -> [``mp_prefetch``
workers] -> normalise. So global batch ``t`` is blocks ``t*n .. t*n + n - 1``: the processes' local
batches, concatenated in process order, are exactly the one-process batch -- the same rows in the same
order, whatever the number of processes -- and a process only reads and decodes its own rows. The
random_map rng is seeded from (seed, global element index), so augmentation does not depend on the
process count either, the same seed gives the same batches, and ``worker_count`` does not change them.

Batches are dicts of numpy arrays (B = local batch, L = ``max_len``):
  ``image`` float32 [B, H, W, 3] in [-1, 1] (``normalize``: x / 127.5 - 1; ``denormalize`` inverts),
  ``text`` int32 [B, L] (``[BOS] ... [EOT] PAD``, see ``mmjax.data.tokenizer``), ``label`` int32 [B],
  ``id`` int32 [B] (index of the example in its split), ``truncated`` bool [B] (caption cut to fit L),
  with ``hard_negatives`` ``text_neg`` int32 [B, L]: the caption with one shape word swapped, and with
  ``extra_short_caption`` ``text_short`` int32 [B, L]: also the caption naming the main object alone.

Vision-language models (LLaVA-style) use the same loader with another per-example transform,
``train_loader(..., preprocess=vlm_preprocess(data_cfg, tokenizer, num_image_tokens))``: each example is a
caption (probability ``caption_prob``; prompt ``caption_prompt``) or one of the record's questions, flipped
like the image, and ``encode_vlm`` lays it out as ``[BOS] [IMG]*n prompt [SEP] answer [EOT] PAD...``; with
``vqa_turns > 1`` further questions about the same image follow as ``question [SEP] answer [EOT]`` turns
(as many as fit), so one image's forward pass teaches several answers.
Its batches: ``image`` as above, ``tokens`` int32 [B, L], ``kind`` int32 [B] (0 caption, 1 VQA), ``id``
int32 [B], ``truncated`` bool [B] (answer cut to fit L).

Checkpointing: ``it = iter(train_loader(...))`` is a ``grain.DatasetIterator``; ``it.get_state()`` (a
JSON-able dict) and ``it.set_state(state)`` on a fresh iterator of an identically configured pipeline
(same worker_count too: the state's layout depends on it) resume exactly. With Orbax (0.12) save it
as one item of a composite checkpoint, ``ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it),
...)``, and restore in place with ``grain.checkpoint.CheckpointRestore(it)``; the handler registered for
these args is ``grain.checkpoint.CheckpointHandler`` (with several processes each saves its own
iterator's state). Iterators with workers should be ``close()``d.

``worker_count > 0`` prepares batches in that many Grain processes, each keeping ``worker_buffer_size``
(default 2) batches ready. Grain's workers need parsed absl flags; we mark them parsed when they are not
(e.g. under pytest). Workers are started with "spawn", so scripts need an ``if __name__ == "__main__":``
guard (absl's ``app.run`` style is fine).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import os
import re
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
from PIL import Image, UnidentifiedImageError

from mmjax.config import DataError
from mmjax.data import shapes, shapes_builder
from mmjax.data.layout import encode_vlm, images_per_example  # also part of this module's API
from mmjax.data.tokenizer import Tokenizer


def normalize(image_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return np.asarray(image_uint8, np.float32) / 127.5 - 1.0


def denormalize(image: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] -> uint8 [0, 255] (for display)."""
    return np.clip(np.round((np.asarray(image) + 1.0) * 127.5), 0, 255).astype(np.uint8)


GENERIC_PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
)


def _generic_prompt_templates(data_cfg) -> list[str]:
    return list(GENERIC_PROMPT_TEMPLATES)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """How the pipeline reads one dataset (``data.name``); register it with ``register_dataset``.

    ``source(data_cfg, split)``: a random-access source of the split (``len()``, ``source[i]`` -> record
    dict; what ``builder.as_data_source(split)`` returns; record ``i`` is example ``i``), called in the
    main process only (Grain pickles the built pipeline, source included, into its workers).
    ``class_names(data_cfg)``: the names of the labels, for zero-shot classification.
    ``prompt_templates(data_cfg)``: zero-shot prompts, ``template.format(class_name)``.
    ``splits``: the valid split names.
    ``short_caption``: the index, in every record's ``captions``, of the caption that names the main
    object alone (``data.short_caption_prob``); None: there is none.
    ``attribute_words``: the words of each attribute the captions name (e.g. the colours, the shapes), for
    ``loss.negatives="minimal_pairs"``; empty: none."""

    source: Callable[[Any, str], Any]
    class_names: Callable[[Any], list[str]]
    prompt_templates: Callable[[Any], list[str]] = _generic_prompt_templates
    splits: tuple[str, ...] = ("train", "validation", "test")
    short_caption: int | None = None
    attribute_words: tuple[tuple[str, ...], ...] = ()


# data.name -> Dataset, or "package.module:ATTRIBUTE" naming one (imported on first use, then cached).
DATASETS: dict[str, Dataset | str] = {}


def register_dataset(name: str, dataset: Dataset | str) -> None:
    """Make ``data.name=name`` read ``dataset``: a ``Dataset``, or the import path ``"module:attr"`` of one
    (lazy: the module is imported when the name is first used, so a config naming it needs no import)."""
    if isinstance(dataset, str):
        if not re.fullmatch(r"[\w.]+:[\w.]+", dataset):
            raise ValueError(
                f"dataset {name!r}: import path {dataset!r} is not of the form 'package.module:ATTRIBUTE'"
            )
    elif not isinstance(dataset, Dataset):
        raise TypeError(
            f"dataset {name!r} must be a pipeline.Dataset or a 'module:attr' path, "
            f"got {type(dataset).__name__}"
        )
    DATASETS[name] = dataset


def get_dataset(data_cfg_or_name) -> Dataset:
    """The registered ``Dataset`` of ``data.name`` (default "shapes"); an unknown name is a ``ValueError``
    listing the registered ones."""
    name = data_cfg_or_name if isinstance(data_cfg_or_name, str) else data_cfg_or_name.get("name", "shapes")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    entry = DATASETS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            found = functools.reduce(getattr, attr.split("."), importlib.import_module(module))
        except (ImportError, AttributeError) as e:
            raise ValueError(
                f"dataset {name!r} is registered as {entry!r}, which does not import: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(found, Dataset):
            raise TypeError(
                f"dataset {name!r}: {entry!r} is a {type(found).__name__}, not a pipeline.Dataset"
            )
        entry = DATASETS[name] = found
    return entry


def prompt_templates(data_cfg=None) -> list[str]:
    """Zero-shot prompts of ``data.name``; ``template.format(class_name)``. Without ``data_cfg``, the
    shapes templates (every word is in the shapes vocabulary)."""
    return get_dataset(data_cfg if data_cfg is not None else "shapes").prompt_templates(data_cfg)


def class_names(data_cfg) -> list[str]:
    return list(get_dataset(data_cfg).class_names(data_cfg))


def attribute_words(data_cfg) -> tuple[tuple[str, ...], ...]:
    return get_dataset(data_cfg).attribute_words


def _data_source(data_cfg, split: str):
    ds = get_dataset(data_cfg)
    if split not in ds.splits:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(ds.splits)}")
    return ds.source(data_cfg, split)


def _shapes_source(data_cfg, split: str):
    builder = shapes_builder.ensure_built(
        data_cfg.get("data_dir", None),
        seed=data_cfg.get("seed", 0),
        image_size=data_cfg.get("image_size", 64),
        num_train=data_cfg.get("num_train", 20_000),
        num_validation=data_cfg.get("num_validation", 1_000),
        num_test=data_cfg.get("num_test", 1_000),
    )
    return builder.as_data_source(split)


register_dataset(
    "shapes",
    Dataset(
        source=_shapes_source,
        class_names=lambda data_cfg: list(shapes.CLASS_NAMES),
        prompt_templates=lambda data_cfg: list(shapes.PROMPT_TEMPLATES),
        splits=shapes.SPLITS,
        short_caption=shapes.SHORT_CAPTION,
        attribute_words=(shapes.COLOURS, shapes.SHAPES),
    ),
)


def pair_partners(n: int) -> np.ndarray:
    """``partners[i]``: the example that example ``i`` of an ``n``-example split is paired with, never
    ``i`` itself; fixed (a function of ``n`` only) and spread over the whole split."""
    if n < 2:
        raise ValueError(f"two-image examples need a split of at least 2 examples, got {n}")
    return (np.arange(n) + np.random.default_rng(2).integers(1, n, size=n)) % n


class PairSource:
    """The two-image variant of a data source: element ``i`` is ``(record i, record partners[i])``."""

    def __init__(self, source):
        self.source, self.partners = source, pair_partners(len(source))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        return self.source[i], self.source[int(self.partners[i])]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_image(png: bytes, where: str = "a record") -> np.ndarray:
    """PNG (or any Pillow format) bytes -> uint8 [H, W, 3]; bytes that do not decode are a ``DataError``
    naming the record (``where``, e.g. "train record 12")."""
    try:
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated data), ...
        why = (
            "not an image Pillow can read"
            if isinstance(e, UnidentifiedImageError)
            else f"{type(e).__name__}: {e}"
        )
        raise DataError(
            f"{where}: its image bytes do not decode ({why}); the dataset is damaged: regenerate it "
            "(delete its directory under data.data_dir) or drop the record"
        ) from None


def record_image(record, split: str = "train") -> np.ndarray:
    """``decode_image`` of a record's ``image_png``, naming the record if it does not decode."""
    return decode_image(record["image_png"], f"{split} record {record.get('id')}")


def texts(record, key: str, split: str = "train") -> list[str]:
    """``record[key]`` as a list of str; an empty or blank text is a ``DataError`` naming the record (it
    would train on ``[BOS] [EOT]`` alone, or on an empty answer)."""
    values = [_text(v) for v in record[key]]
    for i, value in enumerate(values):
        if not value.strip():
            raise DataError(
                f"{split} record {record.get('id')}: {key}[{i}] is empty; repair the dataset or "
                "drop the record"
            )
    return values


class TrainPreprocess(grain.transforms.RandomMap):
    """Record -> {image uint8, text, label, id, truncated}: caption sampling and a consistent flip."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_len: int,
        flip_prob: float,
        caption_sampling: str,
        hard_negatives: bool = False,
        short_caption_prob: float = 0.0,
        short_caption: int | None = None,
        extra_short_caption: bool = False,
    ):
        if caption_sampling not in ("random", "canonical"):
            raise ValueError(f"caption_sampling must be 'random' or 'canonical', got {caption_sampling!r}")
        if not 0 <= short_caption_prob <= 1:
            raise ValueError(f"data.short_caption_prob={short_caption_prob} is not a probability in [0, 1]")
        if (short_caption_prob or extra_short_caption) and short_caption is None:
            raise ValueError(
                "data.short_caption_prob > 0 or data.extra_short_caption, but the dataset names no "
                "short caption (Dataset.short_caption); set them to 0 and False"
            )
        self.tokenizer, self.max_len = tokenizer, max_len
        self.flip_prob, self.caption_sampling = flip_prob, caption_sampling
        self.hard_negatives = hard_negatives
        self.short_caption_prob, self.short_caption = short_caption_prob, short_caption
        self.extra_short_caption = extra_short_caption

    def random_map(self, record, rng: np.random.Generator):
        image = record_image(record)
        captions = texts(record, "captions")
        caption = captions[rng.integers(len(captions))] if self.caption_sampling == "random" else captions[0]
        if self.short_caption_prob and rng.random() < self.short_caption_prob:  # no draw at 0: same as before
            caption = captions[self.short_caption]
        short = captions[self.short_caption] if self.extra_short_caption else None
        if rng.random() < self.flip_prob:
            image, caption = np.ascontiguousarray(image[:, ::-1]), shapes.flip_text(caption)
            short = None if short is None else shapes.flip_text(short)
        text, truncated = self.tokenizer.tokenize([caption], self.max_len, return_truncated=True)
        out = {
            "image": image,
            "text": text[0],
            "label": np.int32(record["label"]),
            "id": np.int32(record["id"]),
            "truncated": truncated[0],
        }
        if short is not None:
            out["text_short"] = self.tokenizer.tokenize([short], self.max_len)[0]
        if self.hard_negatives:
            out["text_neg"] = self.tokenizer.tokenize([shapes.swap_shape_word(caption, rng)], self.max_len)[0]
        return out


class VlmPreprocess(grain.transforms.RandomMap):
    """Record -> {image uint8, tokens, kind (0 caption, 1 VQA), id, truncated}: a captioning example with
    probability ``caption_prob`` (prompt ``caption_prompt``; caption 0 or, with 'random', any caption),
    else one of the record's questions and its answer; flipped left-right with ``flip_prob``, text too.

    A pair of records (``PairSource``) gives ``image [2, H, W, 3]``: the example is about one of the two
    images, named in the text (``shapes.about_image``: "in the second image what colour is ..."), and
    the later turns of a conversation ask about either image. ``num_image_tokens`` counts the
    placeholders of all of a row's images."""

    CAPTION, VQA = 0, 1

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_image_tokens: int,
        max_len: int,
        flip_prob: float,
        caption_prompt: str,
        caption_prob: float,
        caption_sampling: str,
        vqa_turns: int = 1,
        images: int = 1,
    ):
        if caption_sampling not in ("random", "canonical"):
            raise ValueError(f"caption_sampling must be 'random' or 'canonical', got {caption_sampling!r}")
        if caption_prob > 0:  # fail here, not in a Grain worker
            prompt = shapes.about_image(caption_prompt, images - 1) if images > 1 else caption_prompt
            encode_vlm(tokenizer, num_image_tokens, prompt, "", max_len)
        self.tokenizer, self.num_image_tokens, self.max_len = tokenizer, num_image_tokens, max_len
        self.flip_prob, self.caption_prompt = flip_prob, caption_prompt
        self.caption_prob, self.caption_sampling = caption_prob, caption_sampling
        self.vqa_turns = vqa_turns

    def random_map(self, record, rng: np.random.Generator):
        kind_u, pick_u, flip_u = rng.random(3)  # always the same draws, in the same order
        records = record if isinstance(record, tuple) else (record,)
        which = int(rng.random() * len(records)) if len(records) > 1 else 0  # the image asked about
        about = shapes.about_image if len(records) > 1 else (lambda text, k: text)
        asked, turns = records[which], []
        if kind_u < self.caption_prob:
            kind, prompt = self.CAPTION, about(self.caption_prompt, which)
            captions = texts(asked, "captions")
            answer = (
                captions[int(pick_u * len(captions))] if self.caption_sampling == "random" else captions[0]
            )
        else:
            questions, answers = (
                [texts(r, "questions") for r in records],
                [texts(r, "answers") for r in records],
            )
            kind, i = self.VQA, int(pick_u * len(questions[which]))
            prompt, answer = about(questions[which][i], which), answers[which][i]
            # more questions (about any of the images), in random order, as later turns
            if self.vqa_turns > 1:
                pool = [(k, j) for k, q in enumerate(questions) for j in range(len(q))]
                others = [pool[p] for p in rng.permutation(len(pool)) if pool[p] != (which, i)][
                    : self.vqa_turns - 1
                ]
                turns = [(about(questions[k][j], k), answers[k][j]) for k, j in others]
        images = [record_image(r) for r in records]
        image = np.stack(images) if len(images) > 1 else images[0]
        if flip_u < self.flip_prob:  # a mirrored question about a mirrored scene keeps its answer
            image = np.ascontiguousarray(np.flip(image, axis=-2))
            prompt, answer = shapes.flip_text(prompt), shapes.flip_text(answer)
            turns = [(shapes.flip_text(q), shapes.flip_text(a)) for q, a in turns]
        tokens, truncated = encode_vlm(
            self.tokenizer, self.num_image_tokens, prompt, answer, self.max_len, turns
        )
        return {
            "image": image,
            "tokens": tokens,
            "kind": np.int32(kind),
            "id": np.int32(asked["id"]),
            "truncated": np.bool_(truncated),
        }


def vlm_preprocess(data_cfg, tokenizer: Tokenizer, num_image_tokens: int) -> VlmPreprocess:
    """``VlmPreprocess`` from ``data_cfg`` (max_len, flip_prob, caption_prompt, caption_prob,
    caption_sampling, vqa_turns, images_per_example); pass it to ``train_loader(preprocess=...)``."""
    return VlmPreprocess(
        tokenizer,
        num_image_tokens,
        data_cfg.get("max_len", 32),
        data_cfg.get("flip_prob", 0.5),
        data_cfg.get("caption_prompt", "what is in the image"),
        data_cfg.get("caption_prob", 0.3),
        data_cfg.get("caption_sampling", "canonical"),
        data_cfg.get("vqa_turns", 1),
        images_per_example(data_cfg),
    )


def _normalize_batch(batch: dict) -> dict:
    return {**batch, "image": normalize(batch["image"])}


def _ensure_absl_flags_parsed() -> None:
    from absl import flags

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
    built from ``data_cfg`` with ``tokenizer`` (only it needs the tokenizer)."""
    if preprocess is None:
        if tokenizer is None:
            raise ValueError("train_loader needs a tokenizer or a preprocess transform")
        preprocess = TrainPreprocess(
            tokenizer,
            data_cfg.get("max_len", 32),
            data_cfg.get("flip_prob", 0.5),
            data_cfg.get("caption_sampling", "random"),
            data_cfg.get("hard_negatives", False),
            data_cfg.get("short_caption_prob", 0.0),
            get_dataset(data_cfg).short_caption,
            data_cfg.get("extra_short_caption", False),
        )
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if global_batch_size % shard_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the number of "
            f"data shards (processes) {shard_count}"
        )
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside [0, shard_count={shard_count})")
    source = _data_source(data_cfg, "train")
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
    worker_count = data_cfg.get("worker_count", 0) or 0
    if worker_count > 0:  # workers prepare whole batches; which rows form a batch does not depend on them
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=data_cfg.get("worker_buffer_size", None) or 2
            )
        )
    return ds.map(_normalize_batch)


def load_split(data_cfg, split: str, *, tokenizer: Tokenizer, max_examples: int | None = None) -> dict:
    """A whole split in memory, in order, unaugmented; ``text`` holds the canonical captions."""
    source = _data_source(data_cfg, split)
    n = len(source) if max_examples is None else min(max_examples, len(source))
    records = [source[i] for i in range(n)]
    captions = [texts(r, "captions", split) for r in records]
    canonical = [c[0] for c in captions]
    size = data_cfg.get("image_size", 64)
    images = (
        np.stack([normalize(record_image(r, split)) for r in records])
        if records
        else np.zeros((0, size, size, 3), np.float32)
    )
    return {
        "image": images,
        "text": tokenizer.tokenize(canonical, data_cfg.get("max_len", 32)),
        "caption": canonical,
        "captions": captions,
        "label": np.array([r["label"] for r in records], np.int32),
        "id": np.array([r["id"] for r in records], np.int32),
        # Captions-only datasets may leave these fields out: empty lists then.
        "questions": [[_text(q) for q in r.get("questions", ())] for r in records],
        "answers": [[_text(a) for a in r.get("answers", ())] for r in records],
        "question_types": [[_text(t) for t in r.get("question_types", ())] for r in records],
        "class_names": class_names(data_cfg),
    }


def load_pairs(data_cfg, split: str, *, tokenizer: Tokenizer, max_examples: int | None = None) -> dict:
    """The two-image variant of ``load_split``: pair ``i`` is (example ``i``, example ``pair_partners(n)[i]``)
    of the split's first ``n`` examples; ``image`` is ``[n, 2, H, W, 3]``; its questions are both images'
    questions, each naming its image (``shapes.about_image``); its caption, prompt and references are
    those of image ``i % 2`` (``caption_prompt``, one per pair, e.g. "what is in the second image")."""
    data = load_split(data_cfg, split, tokenizer=tokenizer, max_examples=max_examples)
    n = len(data["caption"])
    pairs = np.stack([np.arange(n), pair_partners(n)], axis=1)
    both = lambda key, f: [[f(x, k) for k in (0, 1) for x in data[key][pairs[i, k]]] for i in range(n)]  # noqa: E731
    asked = pairs[np.arange(n), np.arange(n) % 2]
    return {
        **data,
        "image": data["image"][pairs],
        "pairs": pairs,
        "questions": both("questions", shapes.about_image),
        "answers": both("answers", lambda a, k: a),
        "question_types": both("question_types", lambda t, k: t),
        "caption_prompt": [shapes.about_image(data_cfg.caption_prompt, i % 2) for i in range(n)],
        "caption": [data["caption"][j] for j in asked],
        "captions": [data["captions"][j] for j in asked],
        "text": data["text"][asked],
        "label": data["label"][asked],
        "id": data["id"][asked],
    }
