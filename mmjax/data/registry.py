"""The dataset registry: which ``Dataset`` a config's ``data.name`` reads, and what it knows about its text.

Free of the data stack (no Grain, no TFDS at import), so that a task can ask a dataset for its class names,
prompts or attribute words without importing the input pipeline (a GPU benchmark runs with jax, flax and
optax alone). ``register_dataset(name, Dataset(...))`` or, lazily, ``register_dataset(name,
"package.module:ATTRIBUTE")``; "shapes" is registered here. Only the main process consults the registry: the
per-example transforms (``mmjax.data.transforms``) receive the functions they need, and Grain pickles them
into its workers, so a dataset registered at run time works with ``worker_count > 0`` too.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from mmjax.data import shapes

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
    ``loss.negatives="minimal_pairs"``; empty: none.

    The dataset's grammar, for the transforms (module-level functions: Grain pickles them into its workers):
    ``flip_text(text)``: the text of the left-right mirrored image (shapes: "left" <-> "right"); None: a
    flip leaves texts as they are. ``negative_caption(text, rng)``: a caption that does not describe the
    image, for ``data.hard_negatives``; None: the dataset has none. ``about_image(text, k)``: ``text`` asked
    about the ``k``-th image of several (two-image examples); None: the dataset has no two-image examples.
    ``more_questions(record, rng, sides=False)``: (questions, answers) beyond the record's own, for
    ``data.vqa_questions="all"``, with ``sides`` also each object's absolute position
    (``data.vqa_side_questions``); None: the dataset has none. ``shortcut(record, question)``: whether the
    question teaches a shortcut of the training split's co-occurrences (left out with
    ``data.vqa_questions="balanced"``); None: no question does."""

    source: Callable[[Any, str], Any]
    class_names: Callable[[Any], list[str]]
    prompt_templates: Callable[[Any], list[str]] = _generic_prompt_templates
    splits: tuple[str, ...] = ("train", "validation", "test")
    short_caption: int | None = None
    attribute_words: tuple[tuple[str, ...], ...] = ()
    flip_text: Callable[[str], str] | None = None
    negative_caption: Callable[[str, np.random.Generator], str] | None = None
    about_image: Callable[[str, int], str] | None = None
    more_questions: Callable[[Any, np.random.Generator], tuple[list[str], list[str]]] | None = None
    shortcut: Callable[[Any, str], bool] | None = None


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
            f"dataset {name!r} must be a registry.Dataset or a 'module:attr' path, "
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
                f"dataset {name!r}: {entry!r} is a {type(found).__name__}, not a registry.Dataset"
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


def data_source(data_cfg, split: str):
    """The random-access source of ``split`` of ``data.name`` (``len()``, ``source[i]`` -> record)."""
    ds = get_dataset(data_cfg)
    if split not in ds.splits:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(ds.splits)}")
    return ds.source(data_cfg, split)


def _shapes_source(data_cfg, split: str):
    from mmjax.data import shapes_builder  # lazy: TFDS, only where the records are read

    builder = shapes_builder.ensure_built(
        data_cfg.get("data_dir", None),
        seed=data_cfg.get("seed", 0),
        image_size=data_cfg.get("image_size", 64),
        num_train=data_cfg.get("num_train", 20_000),
        num_validation=data_cfg.get("num_validation", 1_000),
        num_test=data_cfg.get("num_test", 1_000),
    )
    return builder.as_data_source(split)


def _shapes_class_names(data_cfg) -> list[str]:
    return list(shapes.CLASS_NAMES)


def _shapes_prompt_templates(data_cfg) -> list[str]:
    return list(shapes.PROMPT_TEMPLATES)


def _shapes_more_questions(record, rng, sides=False):
    return shapes.object_questions(record["objects"], rng, sides)


def _shapes_shortcut(record, question):
    return shapes.pair_shortcut(record["objects"], question)


register_dataset(
    "shapes",
    Dataset(
        source=_shapes_source,
        class_names=_shapes_class_names,
        prompt_templates=_shapes_prompt_templates,
        splits=shapes.SPLITS,
        short_caption=shapes.SHORT_CAPTION,
        attribute_words=(shapes.COLOURS, shapes.SHAPES),
        flip_text=shapes.flip_text,
        negative_caption=shapes.swap_shape_word,
        about_image=shapes.about_image,
        more_questions=_shapes_more_questions,
        shortcut=_shapes_shortcut,
    ),
)


def prepared_path(data_cfg) -> str:
    """``data.path`` of a dataset written by ``python -m mmjax.prepare``; a ``ValueError`` when unset."""
    path = data_cfg.get("path", None)
    if not path:
        raise ValueError(
            "data.name='prepared' reads a dataset written by python -m mmjax.prepare; "
            "set --config.data.path=DIR to its output folder"
        )
    return path


def _prepared_source(data_cfg, split: str):
    from mmjax import prepare  # lazy: TFDS, only where the records are read

    return prepare.open_prepared(prepared_path(data_cfg), split)


def _prepared_class_names(data_cfg) -> list[str]:
    """An imagefolder's class names as its captions read them (``golden_retriever`` -> "golden retriever",
    summary.json's folder names); other formats have none (no zero-shot then)."""
    from mmjax import prepare  # lazy: as above

    names = prepare.read_summary(prepared_path(data_cfg)).get("class_names", [])
    return [prepare.class_caption(name) for name in names]


# A user's own image-caption data (csv, jsonl, webdataset, imagefolder), prepared by python -m mmjax.prepare;
# its texts are not mirrored with a flip (flip_text None), and it has no short captions or attribute words.
register_dataset(
    "prepared",
    Dataset(source=_prepared_source, class_names=_prepared_class_names, splits=("train", "validation")),
)


# TFDS catalog datasets by name (mmjax/data/catalog.py, docs/catalog_datasets.md; prepared as array_record
# under data.data_dir): each is catalog's attribute NAME.upper(), imported when a config first names it.
CATALOG_NAMES = (
    "coco_captions",
    "cifar10",
    "cifar100",
    "imagenet2012",
    "imagenet_v2",
    "food101",
    "oxford_iiit_pet",
    "caltech101",
)
for _name in CATALOG_NAMES:
    register_dataset(_name, f"mmjax.data.catalog:{_name.upper()}")
