"""Zero-shot classification and image<->text retrieval benchmarks of a two-tower model (clip_benchmark's job).

    python -m mmjax.evaluate --model=RUN_DIR|HF_DIR|HUB_ID --dataset=NAME|imagefolder:PATH|prepared:DIR
        [--split=S] [--templates="a photo of a {}."] [--batch-size=64] [--predictions=FILE.jsonl]
        [--data-dir=DIR]

prints one JSON line on stdout: ``dataset``, ``split``, ``examples`` and, for a dataset with class names,
``top1`` and ``top5`` (zero-shot: per class the renormalised mean of its prompts' normalised text
embeddings, ``mmjax.evaluate.zero_shot``), else ``i2t_r1/5/10`` and ``t2i_r1/5/10`` (each image with its
first caption, ``mmjax.evaluate.retrieval``). ``--predictions`` writes one line per example (classification
only): ``{"path": ..., "label": ..., "prediction": ...}``.

``--model``: an mmjax run directory (``python -m mmjax.train --workdir``: the config saved with its latest
checkpoint and its weights; images cropped and normalised as its ``data`` config says), a Hugging Face
directory (``config.json`` + safetensors, ``tokenizer.json``, ``preprocessor_config.json``: prepared as its
image processor does, ``mmjax.interop.preprocess``) or a Hub id ``org/name`` (``snapshot_download``: the
cache only when ``HF_HUB_OFFLINE`` is set). ``--dataset``: a registered dataset (``mmjax.data.registry``;
``--data-dir`` is its ``data_dir``), a folder of class subfolders read as it is (``imagefolder:PATH``), or
the output of ``python -m mmjax.prepare`` (``prepared:DIR``). Every image is decoded the same way (Pillow,
EXIF orientation applied, transparency composited on white, RGB), then prepared for the model.

Batches (``--batch-size``, rounded up to a multiple of the device count; the last one padded, so each
encoder compiles once) are split over every device along a 1-D mesh, the parameters replicated. Errors
(flags, dataset, split, model) are one ``error: ...`` line on stderr, exit status 2 (1: damaged data).
See docs/evaluate_command.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from mmjax import prepare
from mmjax.commands import load_hf_model
from mmjax.config import ConfigError, DataError
from mmjax.data import images, registry
from mmjax.evaluate import retrieval, zero_shot
from mmjax.interop import hub, preprocess

IMAGEFOLDER, PREPARED = "imagefolder:", "prepared:"
IMAGEFOLDER_SPLIT = "all"  # an image folder's one split
PURPOSE = "python -m mmjax.evaluate needs a two-tower (CLIP or SigLIP) model"


class EvaluateError(Exception):
    """A problem with the command line, the model or the dataset: one ``error:`` line, exit status 2."""


# --------------------------------------------------------------------------------------------------------
# Images


def decode_rgb(source, where: str | None = None) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of an image file (a path or a file object): EXIF orientation applied, then the
    conversion ``mmjax.prepare`` stores (transparency composited on white, as transformers' processors do;
    16-bit and float rescaled; any mode to RGB). Undecodable data is a ``DataError`` naming ``where``
    (default: the path)."""
    try:
        with Image.open(source) as image:
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # malformed EXIF: the pixels as stored (as mmjax.prepare does)
                pass
            return np.asarray(prepare.to_rgb(image))  # the project's one RGB conversion
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...) for bad data
        where = where or (source if isinstance(source, str) else "an encoded image")
        raise DataError(f"{where}: not an image Pillow can read ({type(e).__name__}: {e})") from None


def _as_file(rgb: np.ndarray) -> io.BytesIO:
    """``rgb`` as an uncompressed BMP in memory (lossless, fast): ``preprocess.load_image`` opens files."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="BMP")
    buffer.seek(0)
    return buffer


# --------------------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class Encoder:
    """A two-tower model ready to embed.

    ``prepare_image(rgb uint8 [H, W, 3]) -> float32 [S, S, 3]`` and ``tokenize(texts) -> int32 [n, L]``
    feed it as it was trained (or as its Hugging Face processor and tokenizer do); ``object_head``: zero-shot
    scores ``encode_image_object``'s embedding; ``context()``: around tracing (a run's attention kernel);
    ``data_config``: a run's own ``data`` config (None for a Hugging Face model)."""

    model: Any
    params: Any
    prepare_image: Callable[[np.ndarray], np.ndarray]
    tokenize: Callable[[Sequence[str]], np.ndarray]
    object_head: bool = False
    context: Callable[[], Any] = contextlib.nullcontext
    data_config: Any = None


def load_model(spec: str) -> Encoder:
    """The ``Encoder`` of ``--model``: a local run or Hugging Face directory, else a Hub id."""
    if os.path.exists(spec):
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isdir(path):
            raise EvaluateError(f"--model={spec} is a file; pass a run or Hugging Face model directory")
        if os.path.isdir(os.path.join(path, "checkpoints")):
            return load_run(path)
        if os.path.isfile(os.path.join(path, "config.json")):
            return load_hf_dir(path)
        raise EvaluateError(
            f"--model={spec} is neither an mmjax run directory (no checkpoints/) nor a Hugging Face model "
            "directory (no config.json)"
        )
    if hub.is_hub_id(spec):
        return load_hf_dir(hub.resolve(spec))  # its one-line InteropError when the Hub has none
    raise EvaluateError(f"--model={spec}: no such directory, and not a Hugging Face Hub id (org/name)")


def load_hf_dir(directory: str) -> Encoder:
    """A Hugging Face CLIP or SigLIP directory: its weights, tokenizer (``tokenize_like_hf``) and image
    processor (``preprocessor_config.json`` through ``mmjax.interop.preprocess``)."""
    cfg, params, model, tok, pre = load_hf_model(directory, "two_tower", PURPOSE)
    size, max_len = cfg.image_size, cfg.text.max_len
    return Encoder(
        model=model,
        params=params,
        prepare_image=lambda rgb: preprocess.load_image(_as_file(rgb), pre, size),
        tokenize=lambda texts: tok.tokenize_like_hf(list(texts), max_len),
        object_head=bool(getattr(model, "object_head", False)),
    )


def run_config(workdir: str):
    """``(config, step)``: the config saved with the latest checkpoint of run ``workdir``."""
    from mmjax import checkpoint  # lazy: Orbax, only for run directories

    try:
        return checkpoint.saved_config(workdir)
    except ConfigError as e:
        raise EvaluateError(f"--model: {e}") from None


def load_run(workdir: str) -> Encoder:
    """An mmjax training run: its model and tokenizer (``tasks.get_task`` of its saved config), its latest
    weights, its images as its evaluation saw them (``images.eval_view`` by ``data.eval_view`` to
    ``data.image_size``, ``images.normalize`` by ``data.normalization``)."""
    import flax.linen as nn  # lazy: the training stack (Orbax, optax), only for run directories

    from mmjax import checkpoint, tasks
    from mmjax import run as run_lib
    from mmjax.models import layers

    config, step = run_config(workdir)
    kind = config.model.get("type")
    if config.get("task") != "contrastive" or kind != "two_tower":
        raise EvaluateError(f"--model={workdir} is a {config.get('task')} run of a {kind} model; {PURPOSE}")
    task = tasks.get_task(config)
    replicated = jax.sharding.NamedSharding(_mesh(), jax.sharding.PartitionSpec())
    abstract = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0))))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    params = checkpoint.load_params(workdir, abstract, (".*",), step=step)
    data = config.data
    size, normalization = data.get("image_size", 64), data.get("normalization", "minus_one_one")
    view = data.get("eval_view", "center")
    max_len, attention = data.get("max_len", 32), run_lib.attention_implementation(config)
    return Encoder(
        model=task.model,
        params=params,
        prepare_image=lambda rgb: images.normalize(images.eval_view(rgb, size, view), normalization),
        tokenize=lambda texts: task.tokenizer.tokenize(list(texts), max_len),
        object_head=bool(task.model.object_head),
        context=lambda: layers.attention_implementation(attention),
        data_config=data,
    )


# --------------------------------------------------------------------------------------------------------
# Datasets


@dataclasses.dataclass
class EvalSet:
    """One split to evaluate on. ``items`` (a sequence) are read ``batch`` at a time by ``read(items)``;
    ``image(item)`` decodes one to uint8 RGB, ``label(item)``, ``captions(item)`` and ``ident(item)`` (what
    ``--predictions`` calls its ``path``) describe it. ``class_names`` empty: a caption dataset."""

    split: str
    class_names: list[str]
    templates: list[str]
    items: Sequence
    read: Callable[[Sequence], list]
    image: Callable[[Any], np.ndarray]
    label: Callable[[Any], int]
    captions: Callable[[Any], list[str]]
    ident: Callable[[Any], Any]


def _default_split(splits: Sequence[str]) -> str:
    """The evaluation split: test if there is one, else validation, else the last."""
    return next((s for s in ("test", "validation") if s in splits), splits[-1])


def image_folder(path: str, split: str | None) -> EvalSet:
    """``PATH/CLASS/.../IMAGE``, read as it is: class names are the sorted folder names with ``_``/``-`` as
    spaces (``mmjax.prepare``'s imagefolder captions); images of the extensions ``mmjax.prepare`` takes."""
    if split not in (None, IMAGEFOLDER_SPLIT):
        raise EvaluateError(f"unknown split {split!r}; an image folder has one split: {IMAGEFOLDER_SPLIT}")
    if not os.path.isdir(path):
        raise EvaluateError(f"--dataset=imagefolder:{path}: no such folder")
    root = os.path.abspath(path)
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    items = []  # (path relative to the folder, label)
    for label, folder in enumerate(folders):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if (
                    not name.startswith(".")
                    and os.path.splitext(name)[1].lower() in prepare.IMAGEFOLDER_EXTENSIONS
                ):
                    found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        items += [(rel, label) for rel in sorted(found)]
    if not items:
        raise EvaluateError(
            f"--dataset=imagefolder:{path} holds no images in class subfolders (expected {path}/CLASS/IMAGE)"
        )
    return EvalSet(
        split=IMAGEFOLDER_SPLIT,
        class_names=[prepare.class_caption(f) for f in folders],
        templates=list(registry.GENERIC_PROMPT_TEMPLATES),
        items=items,
        read=list,
        image=lambda item: decode_rgb(os.path.join(root, item[0])),
        label=lambda item: item[1],
        captions=lambda item: [prepare.class_caption(folders[item[1]])],
        ident=lambda item: item[0],
    )


def _record_image(record, where: str) -> np.ndarray:
    """A record's image: its encoded ``image_png`` / ``image`` bytes decoded by ``decode_rgb`` (or an
    already decoded uint8 array, converted the same way)."""
    from mmjax.data import transforms  # lazy: Grain, only where registered records are read

    key = next((k for k in transforms.IMAGE_KEYS if k in record), None)
    if key is None:
        fields = ", ".join(sorted(record))
        raise DataError(
            f"record {record.get('id')} has no image field ({' or '.join(transforms.IMAGE_KEYS)}); "
            f"its fields: {fields}"
        )
    value = record[key]
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (2, 3):
        return np.asarray(
            prepare.to_rgb(Image.fromarray(value[..., 0] if value.shape[-1:] == (1,) else value))
        )
    return decode_rgb(io.BytesIO(bytes(value)), where)


def _record_captions(record, split: str) -> list[str]:
    """A record's ``captions`` (``transforms.texts``: a blank one is a ``DataError``)."""
    from mmjax.data import transforms  # lazy: as in _record_image

    if "captions" not in record:
        raise DataError(
            f"{split} record {record.get('id')} has no captions; a dataset without class names needs them"
        )
    return transforms.texts(record, "captions", split)


def _ident(record, index: int):
    """``--predictions``' ``path`` of a record: its ``key`` (a prepared dataset's source path), else its
    ``id`` (an int, or a str), else its index in the split."""
    value = record.get("key", record.get("id", index))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return int(value) if isinstance(value, (int, np.integer)) else str(value)


def registered(data_cfg, split: str | None, label: str) -> EvalSet:
    """A split of the registered dataset ``data_cfg.name`` (``registry.data_source``), its class names and
    prompt templates from the registry. ``label``: the dataset as the command line named it."""
    try:
        dataset = registry.get_dataset(data_cfg)
    except (ValueError, TypeError) as e:
        raise EvaluateError(f"{e}; or imagefolder:PATH, prepared:DIR") from None
    split = split or _default_split(dataset.splits)
    try:
        source = registry.data_source(data_cfg, split)
        class_names = registry.class_names(data_cfg)
        templates = registry.prompt_templates(data_cfg)
    except ValueError as e:  # an unknown split, a dataset that is not there
        raise EvaluateError(f"--dataset={label}: {e}") from None

    def read(indices):
        records = source.__getitems__(list(indices)) if hasattr(source, "__getitems__") else None
        records = records if records is not None else [source[i] for i in indices]
        return [(i, r) for i, r in zip(indices, records)]

    return EvalSet(
        split=split,
        class_names=list(class_names),
        templates=list(templates),
        items=range(len(source)),
        read=read,
        image=lambda item: _record_image(item[1], f"{label} {split} record {_ident(item[1], item[0])}"),
        label=lambda item: int(item[1]["label"]),
        captions=lambda item: _record_captions(item[1], split),
        ident=lambda item: _ident(item[1], item[0]),
    )


def load_dataset(spec: str, split: str | None, data_dir: str | None, run_data=None) -> EvalSet:
    """The ``EvalSet`` of ``--dataset``. A run's own registered dataset (``run_data.name``) is read with the
    run's data config (e.g. the shapes sizes it was generated with), ``--data-dir`` overriding its
    ``data_dir``."""
    if spec.startswith((IMAGEFOLDER, PREPARED)) and data_dir:
        raise EvaluateError(
            f"--data-dir is for registered datasets; {spec.partition(':')[0]}: names its folder"
        )
    if spec.startswith(IMAGEFOLDER):
        return image_folder(spec[len(IMAGEFOLDER) :], split)
    if spec.startswith(PREPARED):
        path = spec[len(PREPARED) :]
        if not path:
            raise EvaluateError("--dataset=prepared:DIR needs the folder written by python -m mmjax.prepare")
        data = registered(ml_collections.ConfigDict({"name": "prepared", "path": path}), split, spec)
        # a prepared image folder's class names are its folder names: prompts name them as its captions do
        data.class_names = [prepare.class_caption(name) for name in data.class_names]
        return data
    own = run_data is not None and run_data.get("name", "shapes") == spec
    data_cfg = ml_collections.ConfigDict(run_data.to_dict() if own else {"name": spec})
    if data_dir:
        data_cfg.data_dir = data_dir
    return registered(data_cfg, split, spec)


# --------------------------------------------------------------------------------------------------------
# Embedding, sharded over every device


def _mesh():
    return jax.sharding.Mesh(np.array(jax.devices()), ("batch",))


class Embedder:
    """Jitted encoders of ``encoder``'s model over a 1-D mesh of every device: each batch split along it,
    the parameters replicated; ``batch_size`` rounded up to a multiple of the device count."""

    def __init__(self, encoder: Encoder, batch_size: int):
        mesh = _mesh()
        self.batch_size = math.ceil(batch_size / mesh.size) * mesh.size
        self.rows = NamedSharding(mesh, PartitionSpec("batch"))
        replicated = NamedSharding(mesh, PartitionSpec())
        self.params = jax.device_put(encoder.params, replicated)
        self.model, self._fns = encoder.model, {}
        self._replicated = replicated

    def fn(self, method: str):
        """The jitted ``(params, batch) -> embeddings`` of the model's ``method``."""
        if method not in self._fns:
            model = self.model
            self._fns[method] = jax.jit(
                lambda params, x: model.apply({"params": params}, x, method=method)[0],
                in_shardings=(self._replicated, self.rows),
                out_shardings=self.rows,
            )
        return self._fns[method]

    def pad(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` filled up to one batch with copies of its last row (the shapes of one compile)."""
        missing = self.batch_size - len(rows)
        return np.concatenate([rows, np.repeat(rows[-1:], missing, axis=0)]) if missing else rows

    def embed(self, method: str, batches, bar=None) -> np.ndarray:
        """The embeddings of the concatenated ``batches`` (numpy arrays of at most ``batch_size`` rows).
        Batch ``i + 1`` is prepared on the host while the devices run batch ``i`` (dispatch is async)."""
        fn, out, pending = self.fn(method), [], []

        def fetch():  # the oldest batch in flight, to the host
            embeddings, rows = pending.pop(0)
            out.append(np.asarray(embeddings)[:rows])
            if bar is not None:
                bar.update(1)

        for rows in batches:
            pending.append((fn(self.params, jax.device_put(self.pad(rows), self.rows)), len(rows)))
            if len(pending) > 1:
                fetch()
        while pending:
            fetch()
        return np.concatenate(out).astype(np.float32)

    def num_batches(self, n: int) -> int:
        return -(-n // self.batch_size)

    def array_batches(self, array: np.ndarray):
        return (array[i : i + self.batch_size] for i in range(0, len(array), self.batch_size))


def _image_batches(data: EvalSet, encoder: Encoder, batch_size: int, meta: list, pool):
    """The split's images, prepared for the model, ``batch_size`` at a time (decoded in ``pool``'s
    threads); the items read are appended to ``meta`` (their labels, captions and idents come later)."""

    def one(item):
        return encoder.prepare_image(data.image(item)).astype(np.float32)

    for start in range(0, len(data.items), batch_size):
        items = data.read(data.items[start : start + batch_size])
        meta.extend(items)
        yield np.stack(list(pool.map(one, items)))


# --------------------------------------------------------------------------------------------------------
# The benchmark


def evaluate(
    encoder: Encoder,
    data: EvalSet,
    *,
    batch_size: int = 64,
    templates: Sequence[str] | None = None,
) -> tuple[dict, list[dict]]:
    """``(metrics, predictions)``: ``top1``/``top5`` and one ``{"path", "label", "prediction"}`` per example
    for a classification split, recall@1/5/10 both ways (and no predictions) for a caption split."""
    embedder = Embedder(encoder, batch_size)
    n, names = len(data.items), data.class_names
    templates = list(templates or data.templates)
    texts = len(names) * len(templates) if names else n  # the prompts, or each image's caption
    meta: list = []
    threads = min(16, os.cpu_count() or 1)
    with (
        encoder.context(),
        concurrent.futures.ThreadPoolExecutor(threads) as pool,
        tqdm(
            total=embedder.num_batches(n) + embedder.num_batches(texts),
            desc="evaluate",
            unit="batch",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        ) as bar,
    ):
        text_embed = lambda tokens: embedder.embed("encode_text", embedder.array_batches(tokens), bar)  # noqa: E731
        images = _image_batches(data, encoder, embedder.batch_size, meta, pool)
        if not names:  # a caption dataset: retrieval
            image_emb = embedder.embed("encode_image", images, bar)
            captions = [data.captions(item)[0] for item in meta]  # each image's first (canonical) caption
            text_emb = text_embed(encoder.tokenize(captions))
            # images with identical captions are interchangeable answers (as a run's evaluation counts)
            return retrieval.retrieval_metrics(image_emb, text_emb, keys=captions), []
        # zero-shot: the prompts name one object, so the object head's embedding where the model has one
        class_emb = zero_shot.class_embeddings(text_embed, encoder.tokenize, names, templates)
        method = "encode_image_object" if encoder.object_head else "encode_image"
        logits = embedder.embed(method, images, bar) @ class_emb.T
    labels = np.array([data.label(item) for item in meta], np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        raise DataError(
            f"example {data.ident(meta[bad[0]])} has label {labels[bad[0]]}, not one of the "
            f"{len(names)} classes"
        )
    metrics = zero_shot.topk_accuracy(logits, labels)
    predictions = [
        {"path": data.ident(item), "label": names[y], "prediction": names[p]}
        for item, y, p in zip(meta, labels, logits.argmax(axis=1))
    ]
    return {"top1": metrics["top1"], "top5": metrics["top5"]}, predictions


# --------------------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise EvaluateError(f"{message} (see python -m mmjax.evaluate --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m mmjax.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog="Output, preprocessing and sharding: docs/evaluate_command.md",
    )
    add = parser.add_argument
    add(
        "--model", required=True, metavar="RUN_DIR|HF_DIR|HUB_ID", help="an mmjax run, HF directory or Hub id"
    )
    add(
        "--dataset",
        required=True,
        metavar="NAME|imagefolder:PATH|prepared:DIR",
        help="a registered dataset, a folder of class subfolders, or python -m mmjax.prepare's output",
    )
    add(
        "--split",
        default=None,
        help="default: test if the dataset has one, else validation, else the last (an image folder: all)",
    )
    add(
        "--templates",
        action="append",
        default=None,
        metavar="TEMPLATE",
        help='zero-shot prompt(s), "{}" standing for the class name; repeat the flag or separate with |',
    )
    add("--batch-size", type=_positive_int, default=64, metavar="N", help="images per batch (64)")
    add("--predictions", default=None, metavar="FILE.jsonl", help="write each example's prediction here")
    add("--data-dir", default=None, metavar="DIR", help="a registered dataset's data_dir")
    return parser


def parse_templates(values: Sequence[str] | None) -> list[str] | None:
    """``--templates`` values (each may hold several, ``|``-separated); each must contain ``{}``."""
    if not values:
        return None
    templates = [t.strip() for value in values for t in value.split("|") if t.strip()]
    for t in templates:
        if "{}" not in t:
            raise EvaluateError(f'--templates: {t!r} has no "{{}}" where the class name goes')
    if not templates:
        raise EvaluateError("--templates: no template given")
    return templates


def check_dataset_name(spec: str, split: str | None) -> None:
    """An unknown registered dataset or split fails now, before any model is loaded."""
    if spec == "prepared":
        raise EvaluateError("--dataset=prepared needs its folder: --dataset=prepared:DIR")
    try:
        dataset = registry.get_dataset(spec)
    except (ValueError, TypeError) as e:
        raise EvaluateError(f"{e}; or imagefolder:PATH, prepared:DIR") from None
    if split is not None and split not in dataset.splits:
        raise EvaluateError(
            f"--dataset={spec}: unknown split {split!r}; valid splits: {', '.join(dataset.splits)}"
        )


def run_command(args: argparse.Namespace) -> dict:
    """Evaluate as the parsed command line says: the result line's dict (``--predictions`` written)."""
    templates = parse_templates(args.templates)
    if args.predictions and os.path.isdir(args.predictions):
        raise EvaluateError(f"--predictions={args.predictions} is a folder; pass a file name")
    if args.dataset.startswith((IMAGEFOLDER, PREPARED)):  # a folder: read before the model is loaded
        data = load_dataset(args.dataset, args.split, args.data_dir)
        encoder = load_model(args.model)
    else:  # a registered dataset: a run's own one is read with the run's data config
        check_dataset_name(args.dataset, args.split)
        encoder = load_model(args.model)
        data = load_dataset(args.dataset, args.split, args.data_dir, encoder.data_config)
    if args.predictions and not data.class_names:
        raise EvaluateError(f"--predictions: {args.dataset} has no class names (a caption dataset)")
    if not data.items:
        raise EvaluateError(f"split {data.split!r} of {args.dataset} has no examples")
    metrics, predictions = evaluate(encoder, data, batch_size=args.batch_size, templates=templates)
    if args.predictions:
        with open(args.predictions, "w", encoding="utf-8") as f:
            for row in predictions:
                f.write(json.dumps(row) + "\n")
    return {"dataset": args.dataset, "split": data.split, "examples": len(data.items), **metrics}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 on success; 2 for bad flags, dataset, split or model; 1 for damaged data."""
    try:
        result = run_command(build_parser().parse_args(argv))
    except (EvaluateError, ConfigError) as e:  # InteropError is a ConfigError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
