"""TFDS builder ``mmjax_shapes``: the shapes dataset (``mmjax.data.shapes``) written as array_record.

Everything is generated locally (nothing is downloaded; GCS look-ups are off, and TFDS's download
messages are left out) and TensorFlow is not needed: images are stored as PNG bytes (``image_png``,
decode with Pillow), text as ``Text`` sequences (read back as ``bytes``). Reading uses
``builder.as_data_source(split)``: random access, record ``i`` of a split is example ``i`` (shuffling at
write time is disabled).

One ``ShapesConfig`` per (seed, image_size, num_train, num_validation, num_test); its name encodes them
(``s0_px64_n20000_1000_1000``), so datasets of different sizes or seeds live in different directories:
``<data_dir>/mmjax_shapes/<config>/<VERSION>``. ``ensure_built`` prepares a config once and is a cheap no-op
afterwards. Default ``data_dir``: ``$MMJAX_DATA_DIR``, else ``~/.cache/mmjax/tensorflow_datasets``.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
import sys
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import shapes


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    seed: int = 0
    image_size: int = 64
    num_train: int = 20_000
    num_validation: int = 1_000
    num_test: int = 1_000


def config_name(
    *,
    seed: int = 0,
    image_size: int = 64,
    num_train: int = 20_000,
    num_validation: int = 1_000,
    num_test: int = 1_000,
) -> str:
    return f"s{seed}_px{image_size}_n{num_train}_{num_validation}_{num_test}"


@functools.lru_cache(maxsize=None)
def _config_from_name(name: str) -> ShapesConfig | None:
    match = re.fullmatch(r"s(\d+)_px(\d+)_n(\d+)_(\d+)_(\d+)", name)
    if not match:
        return None
    seed, image_size, num_train, num_validation, num_test = map(int, match.groups())
    return ShapesConfig(
        name=name,
        seed=seed,
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
    )


DEFAULT_CONFIG = _config_from_name(config_name())


def _ints():
    return tfds.features.Tensor(shape=(None,), dtype=np.int64)


def encode_example(seed: int, split: str, index: int, image_size: int) -> dict:
    """Example ``index`` of ``split`` as the builder stores it (image as PNG bytes)."""
    ex = shapes.generate_example(seed, split, index, image_size)
    buffer = io.BytesIO()
    Image.fromarray(ex["image"]).save(buffer, format="PNG", compress_level=1)
    return {
        "id": index,
        "image_png": buffer.getvalue(),
        "label": ex["label"],
        "captions": ex["captions"],
        "questions": ex["questions"],
        "answers": ex["answers"],
        "question_types": ex["question_types"],
        "background": ex["background"],
        "objects": ex["objects"],
    }


class MmjaxShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic scenes of coloured shapes with captions, class labels and question-answer pairs."""

    # Bump the version whenever generated content changes, so stale data is never reused.
    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "1.1.0": "A short main-object caption among the paraphrases.",
        "1.2.0": "Six shapes (no hexagon, heart), larger objects, a caption without positions.",
    }
    BUILDER_CONFIGS = [DEFAULT_CONFIG]

    @classmethod
    def get_builder_config(cls, name: str, version=None) -> ShapesConfig | None:
        """Any config name of the form ``config_name(...)`` is valid, not only the default one."""
        return _config_from_name(name)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # No checksums or metadata files live next to this module. TFDS's own lookup of them needs
        # `importlib_resources`, which `etils` only installs with its [epath] extra.
        return None

    def is_prepared(self) -> bool:
        # TFDS's check logs "Variant folder ... has no dataset_info.json" for a directory not yet
        # generated; a dataset that is not there yet is not a warning here.
        if not (self.data_path / "dataset_info.json").exists():
            return False
        return super().is_prepared()

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "Dataset ... downloaded and
    # prepared to ..." around generation; nothing is downloaded, and ensure_built prints its own lines.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        texts = tfds.features.Sequence(tfds.features.Text())
        return tfds.core.DatasetInfo(
            builder=self,
            description=shapes.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "id": np.int64,
                    "image_png": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "label": tfds.features.ClassLabel(names=shapes.CLASS_NAMES),
                    "captions": texts,
                    "questions": texts,
                    "answers": texts,
                    "question_types": texts,
                    "background": tfds.features.ClassLabel(names=shapes.BACKGROUNDS),
                    "objects": {k: _ints() for k in ("colour", "shape", "size", "row", "col")},
                }
            ),
            disable_shuffling=True,  # record i is example i
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        sizes = {"train": c.num_train, "validation": c.num_validation, "test": c.num_test}
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num_examples: int):
        # One process is fast enough: ~16 s for the default 22k examples (a 2-process pool saved ~30 %).
        c = self.builder_config
        for index in range(num_examples):
            yield index, encode_example(c.seed, split, index, c.image_size)


def default_data_dir() -> str:
    return os.environ.get("MMJAX_DATA_DIR") or os.path.expanduser("~/.cache/mmjax/tensorflow_datasets")


def get_builder(data_dir: str | None = None, **config_kwargs) -> MmjaxShapes:
    """The builder (prepared or not) for ``config_name(**config_kwargs)``."""
    return MmjaxShapes(
        data_dir=data_dir or default_data_dir(),
        config=config_name(**config_kwargs),
        file_format="array_record",
    )


def ensure_built(
    data_dir: str | None = None,
    *,
    seed: int = 0,
    image_size: int = 64,
    num_train: int = 20_000,
    num_validation: int = 1_000,
    num_test: int = 1_000,
) -> MmjaxShapes:
    """The prepared builder, generating the dataset first if ``data_dir`` does not hold it yet."""
    builder = get_builder(
        data_dir,
        seed=seed,
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
    )
    if builder.is_prepared():
        return builder
    print(f"mmjax: generating the shapes dataset into {builder.data_dir}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    config = tfds.download.DownloadConfig(
        try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    tfds.disable_progress_bar()  # one line here instead of TFDS's per-split bars
    builder.download_and_prepare(file_format="array_record", download_config=config)
    print(f"mmjax: shapes dataset ready in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    return builder
