"""How fast is mmjax's training loader, and how much does Grain cost over a plain loop doing the same work?

Generates ``--images`` synthetic photo-like JPEGs (seeded: textured, several sizes, so that decoding costs
what a photo's does) and a csv, prepares them with ``python -m mmjax.prepare`` (its defaults: JPEG
quality 95, longest side at most 512; reused when present) and times, side by side, at each ``--workers``
count:

* **mmjax**: ``mmjax.data.loaders.train_loader`` with ``configs/clip_custom.py``'s data config (ViT-B/16
  at 224 px: ``crop=random_resized`` scale 0.9-1, ``normalization=clip``, the byte tokenizer at max_len
  128), ``data.worker_count`` = the count;
* **reference**: a plain loop doing the same work per image -- read the record from the same ArrayRecord
  shards (``ArrayRecordReader``), parse its ``tf.Example`` (protobuf), decode the JPEG with Pillow, the same
  random resized crop (``mmjax.data.images.random_resized_crop``), CLIP's mean/std into float32, tokenize
  the caption with the byte tokenizer, stack into batches -- in-process at 0 workers, else in a
  ``multiprocessing.Pool`` ("spawn", like Grain's) of that many processes, each making whole batches. So
  that the two do the same work with the same parallelism, the reference decodes a batch's images over as
  many threads per process as the loader's ``grain.ReadOptions`` uses (``min(16, cores)``;
  ``--reference-threads`` changes it, 1 is a purely serial loop).

Each measurement starts a fresh iterator, takes one warm-up batch per worker (at least one; their time,
from ``iter()`` to the first batch, is the start-up, reported apart), then times ``--batches`` batches:
images/s, and the CPU time of the whole process tree (main process and its workers) per image. The
measurements alternate between the two sides (which goes first alternates too) for ``--rounds`` rounds;
the table shows the median of the rounds. Then each stage of the per-image work is timed in-process, on
one thread, over ``--sample`` records; and from the measured rate per worker, the number of loader
workers a TPU host would need to feed ViT-B/16 (``--chips-per-host`` x ``--step-images-per-s-per-chip``).

    python experiments/loader/run.py                          # defaults: 512 images, batch 64, workers 0,1,2
    python experiments/loader/run.py --images=16 --batches=2 --workers=0,1 --rounds=1 --out=/tmp/l

Writes ``<out>/loader.md`` (the tables) and ``<out>/loader.csv`` (one row per worker count) and
``<out>/loader.json`` (everything, each round's measurements included). Grain's workers and the Pool start
with "spawn", so this file keeps its heavy imports (the config, hence JAX) inside functions.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import datetime
import glob
import importlib.metadata
import io
import json
import math
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mmjax.data import images as images_lib  # noqa: E402
from mmjax.data import tokenizer as tokenizer_lib  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "clip_custom.py")  # ViT-B/16 from scratch on prepared data
# (width, height) of the generated photos: the common camera and web aspect ratios, portrait and landscape
SIZES = ((640, 480), (480, 640), (800, 600), (1024, 768), (500, 375), (375, 500), (640, 427), (1280, 720))
WORDS = (
    "a photo of the old red brick house near a quiet river with two dogs playing on green grass under "
    "cloudy sky while children ride bicycles past tall trees and a small wooden boat rests on sandy shore "
    "at sunset beside colourful market stalls selling fresh fruit bread and flowers in the city square"
).split()
TOKENIZER = "bytes"
# the reference's Pool returns batches pickled through a pipe (Grain's workers hand numpy arrays over in
# shared memory): timed in the breakdown, apart from the in-process stages
TRANSFER = "(Pool only) pickle dumps + loads of the float32 batch"
COLUMNS = (
    "workers",
    "mmjax_images_per_s",
    "reference_images_per_s",
    "ratio",
    "mmjax_images_per_s_per_worker",
    "reference_images_per_s_per_worker",
    "mmjax_startup_s",
    "reference_startup_s",
    "mmjax_cpu_ms_per_image",
    "reference_cpu_ms_per_image",
    "rounds",
)
# Assumed training throughput of ViT-B/16 CLIP at 224 px on one TPU v4 chip: a train step is 3 x the
# forward's 41.09 GFLOPs per image-text pair (open_clip's profile; experiments/benchmarks/flops.py), i.e.
# 123.3 GFLOPs; a v4 chip's dense bf16 peak is 275 TFLOP/s (Cloud TPU docs); at 40 % MFU (the target of
# experiments/benchmarks for clip-vit-b16) that is 275e12 * 0.40 / 123.3e9 = 892 pairs/s per chip.
STEP_IMAGES_PER_S_PER_CHIP = 890.0
CHIPS_PER_HOST = 4  # a TPU v4 host (v4-8 slice: 4 chips, 8 TensorCores)


# ------------------------------------------------------------------------------------------- the data
def _octaves(rng: np.random.Generator, width: int, height: int, octaves) -> np.ndarray:
    """Sum of random colour grids of ``cells`` columns, upsampled (bicubic), each scaled to ``amplitude``."""
    out = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in octaves:
        grid = rng.integers(0, 256, (max(2, cells * height // width), cells, 3), dtype=np.uint8)
        up = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
        out += amplitude / 127.5 * (np.asarray(up, np.float32) - 127.5)
    return out


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: a smooth colour field, a few shapes with hard edges, then detail at finer
    scales over everything (octave noise) and sensor-like grain -- JPEG sizes and decode times like a
    photo's, not a flat colour's."""
    field = _octaves(rng, width, height, ((3, 90.0), (12, 45.0))) + rng.uniform(60, 200, 3).astype(np.float32)
    im = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    pixels = np.asarray(im, np.float32) + _octaves(
        rng, width, height, ((48, 30.0), (max(width, height) // 5, 22.0))
    )
    pixels += rng.normal(0.0, 5.0, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def synthetic_caption(rng: np.random.Generator) -> str:
    """A caption of 6 to 24 words from a small vocabulary (some exceed the 126 bytes max_len 128 keeps)."""
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(6, 25))))


def make_dataset(work: str, count: int, seed: int) -> str:
    """``count`` synthetic JPEGs and ``pairs.csv`` under ``work/n{count}_seed{seed}``, prepared with
    ``mmjax.prepare`` (every record in ``train``); reused when already prepared. Returns the prepared
    dataset's directory."""
    from mmjax import prepare  # lazy: TFDS

    base = os.path.join(work, f"n{count}_seed{seed}")
    prepared = os.path.join(base, "prepared")
    if os.path.exists(os.path.join(prepared, prepare.SUMMARY_FILE)):
        return prepared
    os.makedirs(os.path.join(base, "images"), exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        path = os.path.join("images", f"{i:05d}.jpg")
        synthetic_photo(rng, width, height).save(os.path.join(base, path), format="JPEG", quality=90)
        rows.append((path, synthetic_caption(rng)))
    with open(os.path.join(base, "pairs.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("filepath", "title"))
        writer.writerows(rows)
    argv = [
        "--format=csv",
        f"--input={os.path.join(base, 'pairs.csv')}",
        f"--output={prepared}",
        "--validation-fraction=0",
        f"--workers={min(2, os.cpu_count() or 1)}",
    ]
    if prepare.main(argv) != 0:
        raise RuntimeError(f"python -m mmjax.prepare {' '.join(argv)} failed")
    return prepared


def train_shards(prepared: str) -> list[str]:
    """The ArrayRecord shard files of the prepared dataset's train split, in order."""
    shards = sorted(glob.glob(os.path.join(prepared, "**", "*-train.array_record-*"), recursive=True))
    if not shards:
        raise FileNotFoundError(f"{prepared} has no train ArrayRecord shards")
    return shards


# ------------------------------------------------------------------------------------- the reference
class Reference:
    """The plain loader: batch ``b`` is rows ``b * batch ..`` of a seeded permutation per epoch of the
    records, each read from the ArrayRecord shards, parsed, decoded, cropped at random (an rng per row),
    captioned (one caption at random) and tokenized; images normalised with CLIP's mean and std per batch.
    Picklable: a process opens its own readers on first use."""

    def __init__(self, shards, batch, image_size, max_len, scale, seed, threads, normalization="clip"):
        self.shards, self.batch, self.image_size, self.max_len = list(shards), batch, image_size, max_len
        self.scale, self.seed, self.threads = tuple(scale), seed, threads
        mean, std = images_lib.NORMALIZATIONS[normalization]
        self.mean, self.std = np.float32(mean) * 255, np.float32(std) * 255  # (x - 255 mean) / (255 std)
        self._readers = self._pool = None
        self._orders: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {**self.__dict__, "_readers": None, "_pool": None, "_orders": {}}

    def _open(self):
        from array_record.python import array_record_module

        self._readers = [
            array_record_module.ArrayRecordReader(p, options="readahead_buffer_size:0") for p in self.shards
        ]
        self._starts = np.cumsum([0] + [r.num_records() for r in self._readers])
        self._tokenizer = tokenizer_lib.get_tokenizer(TOKENIZER)
        from tensorflow_datasets.proto import tf_example_pb2  # protobuf only, no TensorFlow

        self._example = tf_example_pb2.Example
        if self.threads > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads)

    def close(self) -> None:
        """Stop the decoding threads (a worker process's stop with it)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __len__(self) -> int:
        if self._readers is None:
            self._open()
        return int(self._starts[-1])

    def read(self, i: int) -> bytes:
        """The serialized record ``i``."""
        if self._readers is None:
            self._open()
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._readers[shard].read([i - int(self._starts[shard])])[0]

    def parse(self, serialized: bytes) -> tuple[bytes, list[bytes]]:
        """The encoded image and the captions of a serialized ``tf.Example``."""
        feature = self._example.FromString(serialized).features.feature
        return feature["image"].bytes_list.value[0], list(feature["captions"].bytes_list.value)

    @staticmethod
    def decode(encoded: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))

    def crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return images_lib.random_resized_crop(image, self.image_size, rng, self.scale)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels.astype(np.float32) - self.mean) / self.std

    def tokenize(self, captions: list[bytes], rng: np.random.Generator) -> np.ndarray:
        caption = captions[int(rng.integers(len(captions)))].decode("utf-8")
        return self._tokenizer.tokenize([caption], self.max_len)[0]

    def example(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``k`` of the endless shuffled sequence: (float32 normalised image, int32 tokens)."""
        n = len(self)
        epoch, position = divmod(k, n)
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng((self.seed, epoch)).permutation(n)
        i = int(self._orders[epoch][position])
        rng = np.random.default_rng((self.seed, k))
        encoded, captions = self.parse(self.read(i))
        return self.normalize(self.crop(self.decode(encoded), rng)), self.tokenize(captions, rng)

    def __call__(self, b: int) -> dict:
        """Batch ``b``: ``image`` float32 [B, S, S, 3], ``text`` int32 [B, max_len]. With ``threads`` > 1
        the rows are made (read to normalised) by that many threads; only the stacking is serial."""
        if self._readers is None:
            self._open()
        rows = range(b * self.batch, (b + 1) * self.batch)
        pairs = list(self._pool.map(self.example, rows)) if self._pool else [self.example(k) for k in rows]
        return {"image": np.stack([p[0] for p in pairs]), "text": np.stack([p[1] for p in pairs])}


_WORKER_REFERENCE: Reference | None = None


def _init_reference_worker(reference: Reference) -> None:
    global _WORKER_REFERENCE
    _WORKER_REFERENCE = reference


def _reference_batch(b: int) -> dict:
    return _WORKER_REFERENCE(b)


def reference_batches(reference: Reference, workers: int, count: int):
    """``count`` batches of ``reference``, in order: in-process at 0 workers, else from a spawned Pool."""
    if workers == 0:
        try:
            for b in range(count):
                yield reference(b)
        finally:
            reference.close()
        return
    pool = multiprocessing.get_context("spawn").Pool(
        workers, initializer=_init_reference_worker, initargs=(reference,)
    )
    try:
        yield from pool.imap(_reference_batch, range(count), chunksize=1)
    finally:
        pool.terminate()
        pool.join()


# ----------------------------------------------------------------------------------------- the loader
def loader_config(prepared: str, workers: int, image_size: int):
    """``configs/clip_custom.py``'s data config (ViT-B/16), reading ``prepared`` with ``workers``."""
    from mmjax import config as config_lib  # lazy: the config imports the models (JAX)

    data = config_lib.load_file(CONFIG).data
    data.path, data.worker_count, data.image_size = prepared, workers, image_size
    return data


def mmjax_batches(data_cfg, batch: int, seed: int, count: int):
    """``count`` batches of mmjax's training loader (one process: shard 0 of 1); closes its workers."""
    from mmjax.data import loaders  # lazy: Grain

    tokenizer = tokenizer_lib.get_tokenizer(data_cfg.tokenizer)
    it = iter(
        loaders.train_loader(
            data_cfg, tokenizer=tokenizer, global_batch_size=batch, seed=seed, shard_index=0, shard_count=1
        )
    )
    try:
        for _ in range(count):
            yield next(it)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------------------- measurement
def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (the loader's workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # exited meanwhile
            pass
    return total


def measure(batches, batch: int, image_size: int, warmup: int, timed: int) -> dict:
    """Drain an iterator of ``warmup + timed`` batches: start-up (``iter`` to the first batch), images/s
    and CPU ms per image over the ``timed`` batches after the warm-up."""
    start = time.perf_counter()
    first = None
    for i in range(warmup):
        got = next(batches)
        if i == 0:
            first = time.perf_counter() - start
            if got["image"].shape != (batch, image_size, image_size, 3) or got["image"].dtype != np.float32:
                raise AssertionError(f"unexpected batch image {got['image'].shape} {got['image'].dtype}")
    cpu, t0 = tree_cpu_seconds(), time.perf_counter()
    for _ in range(timed):
        next(batches)
    elapsed, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu
    for _ in batches:  # nothing left; lets the generator close its workers
        pass
    images = timed * batch
    return {
        "startup_s": first,
        "images_per_s": images / elapsed,
        "cpu_ms_per_image": 1000 * cpu / images,
        "seconds": elapsed,
    }


def run_side(side: str, args, prepared: str, workers: int) -> dict:
    warmup = max(1, workers)  # one batch per worker: every worker has started and delivered
    count = warmup + args.batches
    if side == "mmjax":
        data_cfg = loader_config(prepared, workers, args.image_size)
        batches = mmjax_batches(data_cfg, args.batch, args.seed, count)
    else:
        data_cfg = loader_config(prepared, 0, args.image_size)
        reference = Reference(
            train_shards(prepared),
            args.batch,
            args.image_size,
            data_cfg.max_len,
            data_cfg.crop_scale,
            args.seed,
            args.reference_threads,
            data_cfg.normalization,
        )
        batches = reference_batches(reference, workers, count)
    return measure(batches, args.batch, args.image_size, warmup, args.batches)


def stage_breakdown(prepared: str, args) -> list[dict]:
    """Per-image time (ms, median and mean over ``--sample`` records, one thread, in-process) of each
    stage of the reference, and of mmjax's own record read and per-example transform for comparison."""
    from mmjax import prepare
    from mmjax.data import transforms

    data_cfg = loader_config(prepared, 0, args.image_size)
    ref = Reference(
        train_shards(prepared),
        args.batch,
        args.image_size,
        data_cfg.max_len,
        data_cfg.crop_scale,
        args.seed,
        1,
        data_cfg.normalization,
    )
    n = min(args.sample, len(ref))
    source = prepare.open_prepared(prepared, "train")
    preprocess = transforms.train_preprocess(data_cfg, tokenizer_lib.get_tokenizer(data_cfg.tokenizer))
    times: dict[str, list[float]] = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        times.setdefault(name, []).append(1000 * (time.perf_counter() - t))
        return out

    source[0], ref.read(0)  # open the files before timing
    crops = []
    for i in range(n):
        rng = np.random.default_rng((args.seed, i))
        serialized = timed("read (ArrayRecord)", ref.read, i)
        encoded, captions = timed("parse (tf.Example protobuf)", ref.parse, serialized)
        image = timed("decode (Pillow JPEG -> RGB)", ref.decode, encoded)
        crop = timed("random resized crop (bicubic)", ref.crop, image, rng)
        crops.append(timed("normalise (CLIP mean/std, float32)", ref.normalize, crop))
        timed("tokenize (bytes, max_len 128)", ref.tokenize, captions, rng)
        # mmjax's own path for the same record, interleaved (so drift hits both)
        record = timed("mmjax: record read + parse (TFDS source)", source.__getitem__, i)
        out = timed(
            "mmjax: TrainPreprocess.random_map (decode, crop, tokenize)",
            preprocess.random_map,
            record,
            np.random.default_rng((args.seed, i)),
        )
        timed("mmjax: images.normalize (clip)", images_lib.normalize, out["image"], "clip")
    for start in range(0, n, args.batch):
        chunk = crops[start : start + args.batch]
        t = time.perf_counter()
        batch = {"image": np.stack(chunk)}
        times.setdefault("stack into a batch", []).append(1000 * (time.perf_counter() - t) / len(chunk))
        t = time.perf_counter()
        pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        times.setdefault(TRANSFER, []).append(1000 * (time.perf_counter() - t) / len(chunk))
    rows = [
        {"stage": s, "ms_median": statistics.median(times[s]), "ms_mean": statistics.fmean(times[s])}
        for s in sorted(times, key=lambda s: s.startswith("mmjax"))  # the reference's stages first
    ]
    total = sum(r["ms_mean"] for r in rows if not r["stage"].startswith(("mmjax", "(Pool")))
    mine = sum(r["ms_mean"] for r in rows if r["stage"].startswith("mmjax"))
    rows.append({"stage": "reference total, in-process stages", "ms_median": None, "ms_mean": total})
    rows.append({"stage": "mmjax total (source, transform, normalize)", "ms_median": None, "ms_mean": mine})
    return rows


def summarize(results: list[dict], workers: list[int], rounds: int) -> list[dict]:
    """One row per worker count: the median over rounds of each side's measurements."""
    rows = []
    for w in workers:
        side = {
            s: [r for r in results if r["workers"] == w and r["side"] == s] for s in ("mmjax", "reference")
        }
        med = {
            s: {
                k: statistics.median(r[k] for r in side[s])
                for k in side[s][0]
                if k not in ("side", "workers", "round")
            }
            for s in side
        }
        per = max(1, w)
        rows.append(
            {
                "workers": w,
                "mmjax_images_per_s": med["mmjax"]["images_per_s"],
                "reference_images_per_s": med["reference"]["images_per_s"],
                "ratio": med["mmjax"]["images_per_s"] / med["reference"]["images_per_s"],
                "mmjax_images_per_s_per_worker": med["mmjax"]["images_per_s"] / per,
                "reference_images_per_s_per_worker": med["reference"]["images_per_s"] / per,
                "mmjax_startup_s": med["mmjax"]["startup_s"],
                "reference_startup_s": med["reference"]["startup_s"],
                "mmjax_cpu_ms_per_image": med["mmjax"]["cpu_ms_per_image"],
                "reference_cpu_ms_per_image": med["reference"]["cpu_ms_per_image"],
                "rounds": rounds,
            }
        )
    return rows


def host_estimate(rows: list[dict], args, cores: int) -> dict:
    """Loader workers (and CPU cores) a TPU host needs to feed ``--chips-per-host`` chips at
    ``--step-images-per-s-per-chip``: from the mmjax rate per worker at the largest measured worker count
    that has a core of its own (else the largest), and from its CPU time per image."""
    with_workers = [r for r in rows if r["workers"] > 0] or rows
    fitting = [r for r in with_workers if r["workers"] <= cores] or with_workers
    row = max(fitting, key=lambda r: r["workers"])
    required = args.chips_per_host * args.step_images_per_s_per_chip
    per_worker = row["mmjax_images_per_s_per_worker"]
    return {
        "chips_per_host": args.chips_per_host,
        "step_images_per_s_per_chip": args.step_images_per_s_per_chip,
        "required_images_per_s": required,
        "from_workers": row["workers"],
        "images_per_s_per_worker": per_worker,
        "workers_needed": math.ceil(required / per_worker),
        "cpu_ms_per_image": row["mmjax_cpu_ms_per_image"],
        "cores_needed": math.ceil(required * row["mmjax_cpu_ms_per_image"] / 1000),
    }


# ------------------------------------------------------------------------------------------ reporting
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    versions = {}
    for package in ("jax", "grain", "pillow", "numpy", "array_record", "tensorflow_datasets"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        **versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def fmt(x, digits=1) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def markdown(report: dict) -> str:
    env, est = report["environment"], report["estimate"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {env['cpu']}, {env['nproc']} cores; Python {env['python']}, jax {env['jax']}, grain "
        f"{env['grain']}, Pillow {env['pillow']}, numpy {env['numpy']}; {env['date']}. Load average "
        f"(1 min) before {report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f}; the run took "
        f"{report['wall_s']:.0f} s.",
        "",
        f"{report['images']} synthetic photos ({report['stored']}), batch {report['batch']}, "
        f"{report['image_size']} px, {report['batches']} timed batches after one warm-up batch per worker, "
        f"median of {report['rounds']} alternating rounds; reference threads per process: "
        f"{report['reference_threads']} (mmjax's loader: {report['loader_threads']}).",
        "",
        "| workers | mmjax images/s | reference images/s | ratio (mmjax / reference) | images/s per worker "
        "(mmjax / ref) | start-up s (mmjax / ref) | CPU ms per image (mmjax / ref) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['workers']} | {fmt(r['mmjax_images_per_s'])} | {fmt(r['reference_images_per_s'])} | "
            f"{r['ratio']:.2f} | {fmt(r['mmjax_images_per_s_per_worker'])} / "
            f"{fmt(r['reference_images_per_s_per_worker'])} | {fmt(r['mmjax_startup_s'], 2)} / "
            f"{fmt(r['reference_startup_s'], 2)} | {fmt(r['mmjax_cpu_ms_per_image'], 2)} / "
            f"{fmt(r['reference_cpu_ms_per_image'], 2)} |"
        )
    rounds = []
    for w in sorted({m["workers"] for m in report["measurements"]}):
        for side in ("mmjax", "reference"):
            values = [
                m["images_per_s"] for m in report["measurements"] if (m["workers"], m["side"]) == (w, side)
            ]
            rounds.append(f"{w} {side} {' / '.join(f'{v:.0f}' for v in values)}")
    lines += ["", f"Each round's images/s (workers, side): {'; '.join(rounds)}."]
    lines += [
        "",
        f"Per-image cost of each stage (in-process, one thread, {report['sample']} records):",
        "",
        "| stage | ms (median) | ms (mean) |",
        "|---|---|---|",
    ]
    for s in report["breakdown"]:
        lines.append(f"| {s['stage']} | {fmt(s['ms_median'], 2)} | {fmt(s['ms_mean'], 2)} |")
    serial = [1000 / s["ms_mean"] for s in report["breakdown"][-2:]]
    lines += [
        "",
        f"One thread, from the stage sums: reference {serial[0]:,.0f} images/s, mmjax {serial[1]:,.0f} "
        "images/s (per core, before threads, workers and transfer).",
        "",
        f"TPU host estimate: {est['chips_per_host']} chips x {est['step_images_per_s_per_chip']:,.0f} "
        f"images/s per chip = {est['required_images_per_s']:,.0f} images/s; at the measured "
        f"{est['images_per_s_per_worker']:,.1f} images/s per worker (mmjax, {est['from_workers']} workers) "
        f"that is **{est['workers_needed']} loader workers**; at {est['cpu_ms_per_image']:.2f} CPU ms per "
        f"image, **{est['cores_needed']} CPU cores** busy with loading (this machine's cores, not a TPU "
        "host's).",
    ]
    return "\n".join(lines) + "\n"


def parse_workers(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"a comma-separated list of worker counts >= 0, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=512, help="synthetic photos to generate and prepare (512)")
    p.add_argument("--batch", type=int, default=64, help="batch size (64)")
    p.add_argument("--batches", type=int, default=12, help="timed batches per measurement (12)")
    p.add_argument("--workers", type=parse_workers, default=[0, 1, 2], help="worker counts (0,1,2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the table shows the median (3)")
    p.add_argument("--image-size", type=int, default=224, help="crop size in px (224, ViT-B/16's)")
    p.add_argument("--sample", type=int, default=64, help="records timed per stage in the breakdown (64)")
    p.add_argument(
        "--reference-threads",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="decoding threads per reference process (default: as mmjax's loader, min(16, cores))",
    )
    p.add_argument(
        "--step-images-per-s-per-chip",
        type=float,
        default=STEP_IMAGES_PER_S_PER_CHIP,
        help="assumed ViT-B/16 224 px training images/s per TPU v4 chip (890: 275 TFLOP/s bf16 x 40 %% MFU / "
        "(3 x 41.09 GFLOPs per pair))",
    )
    p.add_argument("--chips-per-host", type=int, default=CHIPS_PER_HOST, help="TPU chips per host (4, v4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "mmjax_loader_bench"),
        help="where the photos and the prepared dataset go (reused when there): /tmp/mmjax_loader_bench",
    )
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()
    env = environment()
    t = time.perf_counter()
    prepared = make_dataset(args.work, args.images, args.seed)
    print(f"dataset: {prepared} ({time.perf_counter() - t:.1f} s)", flush=True)
    with open(os.path.join(prepared, "summary.json")) as f:
        summary = json.load(f)
    stored = f"{summary.get('written', {}).get('train')} train records, JPEG, longest side <= 512"
    results = []
    for rnd in range(args.rounds):
        for j, w in enumerate(args.workers):
            sides = ("mmjax", "reference") if (rnd + j) % 2 == 0 else ("reference", "mmjax")
            for side in sides:
                m = run_side(side, args, prepared, w)
                results.append({"round": rnd, "workers": w, "side": side, **m})
                print(
                    f"round {rnd} workers {w} {side:9s}: {m['images_per_s']:7.1f} images/s, start-up "
                    f"{m['startup_s']:.2f} s, {m['cpu_ms_per_image']:.2f} CPU ms/image",
                    flush=True,
                )
    rows = summarize(results, args.workers, args.rounds)
    breakdown = stage_breakdown(prepared, args)
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "environment": env,
        "images": args.images,
        "stored": stored,
        "batch": args.batch,
        "batches": args.batches,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "sample": min(args.sample, args.images),
        "reference_threads": args.reference_threads,
        "loader_threads": min(16, os.cpu_count() or 1),
        "rows": rows,
        "breakdown": breakdown,
        "estimate": host_estimate(rows, args, env["nproc"]),
        "measurements": results,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
    }
    os.makedirs(args.out, exist_ok=True)
    text = markdown(report)
    with open(os.path.join(args.out, "loader.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "loader.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(args.out, "loader.json"), "w") as f:
        json.dump(report, f, indent=1)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
