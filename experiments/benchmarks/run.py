"""Train-step benchmarks with model FLOP utilisation (MFU), and the levers that move it.

For one model (a CLIP two-tower or an early-fusion model), compile mmjax's one train step on a synthetic
batch under each variant, time it (compile time apart from the steady-state median), and report
pairs/s (two-tower) or tokens/s (early fusion), analytic TFLOP/s per device (``flops.py``) and MFU
against the bf16 and fp32 matmul peaks MEASURED IN THE SAME RUN (a large jitted matmul), and against the
datasheet bf16 peak where the device is known. ``--compare-torch`` adds the torch references at the same
dimensions and batch: on CPU Hugging Face ``CLIPModel`` (float32, AdamW; eager and ``torch.compile``), on
CUDA open_clip with bf16 autocast (``torch.compile`` and eager). Timed steps are interleaved round-robin
over all variants, so a change of the machine's load affects them alike.

    python experiments/benchmarks/run.py --model clip-small --levers all --compare-torch     # CPU
    python experiments/benchmarks/run.py --model llava-small --levers baseline,bf16,remat_dots,scan
    python experiments/benchmarks/run.py --model clip-vit-b16 --batch 256 --compare-torch \
        --levers bf16,bf16+attn_cudnn,bf16+attn_cudnn@512                               # GPU

Writes ``<out>/<platform>_<model>[_<tag>].{md,csv}``. ``--levers``: comma-separated variants, or ``all``
(each lever alone). A variant is ``baseline`` or levers joined by ``+`` (``bf16+attn_cudnn+remat_dots``),
optionally ``@BATCH`` for another batch per device (``bf16+remat_dots@512``: does remat buy a batch that
runs faster?). The levers:

  baseline       float32 compute, donated state, JAX's default attention, no remat, unrolled layers
  bf16           bfloat16 compute (config.dtype), float32 master weights and optimizer state
  attn_xla       attention with implementation='xla'
  attn_cudnn     bf16 + attention with implementation='cudnn' (falls back, and says so, off GPU)
  remat_dots     remat of every block, policy jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  remat_full     remat of every block, nothing saved inside a block
  scan           nn.scan over the blocks of every tower, LM included (parameter layout changes; off by
                 default)
  no_donate      the train state is not donated to the step
  xla_gpu_flags  the variant's other levers in a child process with XLA_GPU_FLAGS added to XLA_FLAGS
                 (GPU only)

A variant that fails (out of memory, say) is one line in the results and the others still run;
``--budget-s`` stops preparing variants after that many seconds (the torch references are prepared
first), for machines lent by the minute (``gpu_session.sh``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The torch references share the GPU with JAX in this process: without this JAX takes 75 % of its memory
# at start-up. (Read when JAX's backend starts, so it must be set before the first device query.)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flops as flops_lib  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import models  # noqa: E402
from mmjax.models import lm as lm_lib  # noqa: E402
from mmjax.profile import datasheet_peak, time_interleaved  # noqa: E402
from mmjax.run import build_run  # noqa: E402

LEVERS = (
    "baseline",
    "bf16",
    "attn_xla",
    "attn_cudnn",
    "remat_dots",
    "remat_full",
    "scan",
    "no_donate",
    "xla_gpu_flags",
)
# Levers that choose between alternatives of one thing: a variant may name at most one of each group.
_EXCLUSIVE = ({"attn_xla", "attn_cudnn"}, {"remat_dots", "remat_full"})


def parse_variant(spec: str) -> tuple[frozenset, int | None]:
    """A variant is ``baseline`` or levers joined by ``+``, optionally ``@BATCH`` (per device):
    ``"bf16+attn_cudnn+remat_dots@512"`` -> ({"bf16", "attn_cudnn", "remat_dots"}, 512). ValueError names
    what is wrong."""
    name, at, batch = spec.partition("@")
    atoms = frozenset() if name == "baseline" else frozenset(name.split("+"))
    bad = sorted(a for a in atoms if a not in LEVERS or a == "baseline")
    if bad or not name:
        raise ValueError(
            f"unknown lever {bad or [name]} in {spec!r}; choose from {', '.join(LEVERS)} "
            "(join several with '+', add '@BATCH' for another batch per device) or 'all'"
        )
    for group in _EXCLUSIVE:
        if len(group & atoms) > 1:
            raise ValueError(f"{spec!r} names {' and '.join(sorted(group & atoms))}; choose one of them")
    if at and not (batch.isdigit() and int(batch) > 0):
        raise ValueError(f"{spec!r}: the batch after '@' must be a positive integer")
    return atoms, int(batch) if at else None


# XLA flags commonly recommended for GPU training throughput (applied only on GPU, lever xla_gpu_flags).
# Flags unknown to the installed XLA make it abort, so the lever runs in a child process.
XLA_GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",  # overlap collectives/copies with compute
    "--xla_gpu_enable_triton_gemm=false",  # cuBLAS(Lt) for every matmul
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",  # fewer, larger gradient all-reduces
)

# Datasheet dense bf16 peak FLOP/s per device (matched against device_kind, first match wins).

_CLIP_VIT = dict(pool="cls", patch_bias=False, pre_norm=True, activation="quick_gelu")
_CLIP_TXT = dict(pool="argmax", activation="quick_gelu", eot_id=2)


def _small_clip(image, patch, width, depth, heads, vocab, length, text_width, text_depth):
    return dict(
        type="two_tower",
        image_size=image,
        embed_dim=width,
        image=dict(
            width=width, depth=depth, num_heads=heads, mlp_dim=4 * width, patch_size=patch, **_CLIP_VIT
        ),
        text=dict(
            vocab_size=vocab,
            max_len=length,
            width=text_width,
            depth=text_depth,
            num_heads=heads,
            mlp_dim=4 * text_width,
            **_CLIP_TXT,
        ),
    )


# Benchmark-only models (OpenAI CLIP architecture at small sizes, so that HF CLIPModel can mirror them),
# besides every named model of mmjax.models.
BENCH_MODELS = {
    "clip-tiny": _small_clip(32, 8, 32, 1, 2, 256, 8, 32, 1),  # tests
    "clip-small": _small_clip(64, 8, 256, 4, 4, 1024, 32, 256, 4),  # CPU
    "llava-tiny": dict(
        type="early_fusion",
        image_size=32,
        projector="mlp2x_gelu",
        vision_tokens="patches",
        image_pool=1,
        attn_mask="prefix",
        image=_small_clip(32, 8, 32, 1, 2, 256, 8, 32, 1)["image"],
        lm=dict(lm_lib.variant("lm-tiny", vocab_size=256)),
    ),
    "llava-small": dict(
        type="early_fusion",
        image_size=64,
        projector="mlp2x_gelu",
        vision_tokens="patches",
        image_pool=1,
        attn_mask="prefix",
        image=_small_clip(64, 8, 256, 4, 4, 1024, 32, 256, 4)["image"],
        lm=dict(width=256, depth=4, num_heads=4, num_kv_heads=4, mlp_dim=704, vocab_size=1024),
    ),
    # GPU: a ViT-B/16 tower with a 16-layer, 1024-wide LM (lm-base), 196 image tokens in 320 positions.
    "llava-b16-base": dict(
        type="early_fusion",
        image_size=224,
        projector="mlp2x_gelu",
        vision_tokens="patches",
        image_pool=1,
        attn_mask="prefix",
        image=models.model_config("clip-vit-b16")["image"],
        lm=dict(lm_lib.variant("lm-base", vocab_size=32000)),
    ),
}
LLAVA_SEQ = {"llava-tiny": 24, "llava-small": 96, "llava-b16-base": 320, "llava-shapes": 64}


def model_config(name: str) -> dict:
    if name in BENCH_MODELS:
        return json.loads(json.dumps(BENCH_MODELS[name]))
    return models.model_config(name)


# ------------------------------------------------------------------------------------------- peaks
def matmul_peak(dtype, n: int, seconds: float = 1.0) -> float:
    """FLOP/s of a jitted ``n x n @ n x n`` matmul in ``dtype`` (float32 accumulation precision as XLA
    chooses), median over repeats filling about ``seconds``."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    reps = max(3, min(50, int(seconds / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def measure_peaks(n: int | None) -> dict:
    if n is None:
        n = 8192 if jax.default_backend() in ("gpu", "tpu") else 2048
    return {"fp32": matmul_peak(jnp.float32, n), "bf16": matmul_peak(jnp.bfloat16, n), "n": n}


# ------------------------------------------------------------------------------------------- mmjax
def make_config(model: str, levers: frozenset, batch: int):
    mcfg = model_config(model)
    if mcfg["type"] == "two_tower":
        config = config_lib.load_file(os.path.join(ROOT, "configs", "clip_shapes.py"))
        config.model = mcfg
        config.data.max_len = mcfg["text"]["max_len"]
        # one caption per image, the step open_clip's reference runs: the main job's second (short)
        # caption would double the text tower's work on one side of the comparison only
        config.data.extra_short_caption, config.loss.short_negatives = False, "all"
    elif mcfg["type"] == "early_fusion":
        config = config_lib.load_file(os.path.join(ROOT, "configs", "llava_shapes.py") + ":stage=2")
        config.model = mcfg
        config.data.max_len = LLAVA_SEQ[model]
        config.optimizer.freeze_regex = ()  # train everything: the step whose FLOPs are counted
        config.init_from = dict(workdir=None, regex=())
        config.loss.prior_from = None  # the model's own step (the blind LM's prior needs a trained run)
    else:
        raise SystemExit(
            f"error: --model {model!r} is a {mcfg['type']} model; benchmark a two_tower or early_fusion one"
        )
    config.data.image_size = mcfg["image_size"]
    config.batch_size = batch * jax.device_count()
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    config.sharding = dict(strategy="dp", rules=())
    if levers & {"bf16", "attn_cudnn"}:
        config.dtype = "bfloat16"
    for attention in levers & {"attn_xla", "attn_cudnn"}:
        config.attention = attention.removeprefix("attn_")
    towers = ("image", "text") if mcfg["type"] == "two_tower" else ("image", "lm")
    for remat in levers & {"remat_dots", "remat_full"}:
        for t in towers:
            config.model[t].remat = remat.removeprefix("remat_")
    if "scan" in levers:
        for t in towers:
            config.model[t].scan = True
    return config


def synthetic_batch(task, batch: int, seed: int = 0) -> dict:
    rs = np.random.RandomState(seed)
    spec = task.batch_spec(batch)
    image = rs.uniform(-1, 1, spec["image"].shape).astype(np.float32)
    if "text" in spec:  # BOS words... EOT PAD...
        n, length = spec["text"].shape
        text = rs.randint(4, task.config.model.text.vocab_size, (n, length)).astype(np.int32)
        text[:, 0] = 1
        for i, e in enumerate(rs.randint(2, length, n)):
            text[i, e], text[i, e + 1 :] = 2, 0
        return {"image": image, "text": text}
    tok = task.tokenizer  # early fusion: BOS [IMG]*N prompt... SEP answer... EOT, no padding
    n, length = spec["tokens"].shape
    words = [
        i
        for i in range(tok.vocab_size)
        if i not in (tok.bos_id, tok.eot_id, tok.pad_id, tok.sep_id, tok.image_id)
    ]
    tokens = rs.choice(words, (n, length)).astype(np.int32)
    k = task.num_image_tokens
    tokens[:, 0], tokens[:, 1 : 1 + k], tokens[:, -1] = tok.bos_id, tok.image_id, tok.eot_id
    tokens[:, 1 + k + (length - k - 2) // 2] = tok.sep_id
    return {"image": image, "tokens": tokens}


def build_runner(model: str, lever: str, batch: int) -> tuple[dict, callable]:
    """Compile the train step of variant ``lever`` (see ``parse_variant``; its ``@BATCH`` overrides
    ``batch``); returns (row, run_step)."""
    levers, at_batch = parse_variant(lever)
    batch = at_batch or batch
    config = make_config(model, levers, batch)
    run = build_run(config, donate="no_donate" not in levers)
    row = {
        "model": model,
        "lever": lever,
        "framework": "mmjax (jax)",
        "dtype": config.dtype,
        "batch_per_device": batch,
        "note": "cuDNN unavailable off GPU: fell back to JAX's default attention"
        if run.attention == "cudnn" and jax.default_backend() != "gpu"
        else "",
    }
    mcfg = config.model.to_dict()
    if mcfg["type"] == "two_tower":
        row["flops_per_step"] = flops_lib.two_tower_train_flops(mcfg, config.batch_size)
        row["items_per_step"], row["unit"] = config.batch_size, "pairs/s"
    else:
        row["flops_per_step"] = flops_lib.early_fusion_train_flops(
            mcfg, config.batch_size, config.data.max_len
        )
        row["items_per_step"], row["unit"] = config.batch_size * config.data.max_len, "tokens/s"
    with run.context():
        state = run.init(init_from=False)
        data = run.global_batch(synthetic_batch(run.task, config.batch_size))
        t0 = time.perf_counter()
        compiled = run.train_step.lower(state, data).compile()
        row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    row["temp_mib"] = getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem is not None else float("nan")
    held = {"state": state}

    def run_step():
        held["state"], metrics = compiled(held["state"], data)
        jax.block_until_ready((held["state"], metrics))
        row["loss"] = float(metrics["loss"])

    return row, run_step


# ------------------------------------------------------------------------------------------- torch
def hf_clip(mcfg: dict):
    """A Hugging Face CLIPModel with the dimensions of an mmjax CLIP-architecture two-tower config."""
    from transformers import CLIPConfig, CLIPModel

    im, tx = mcfg["image"], mcfg["text"]
    if (
        im.get("stem_channels")
        or im.get("pool") != "cls"
        or not im.get("pre_norm")
        or im.get("patch_bias")
        or tx.get("pool") != "argmax"
    ):
        raise ValueError("HF CLIPModel mirrors only OpenAI-CLIP-architecture models (clip-small, clip-vit-*)")
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=tx["vocab_size"],
            hidden_size=tx["width"],
            intermediate_size=tx["mlp_dim"],
            num_hidden_layers=tx["depth"],
            num_attention_heads=tx["num_heads"],
            max_position_embeddings=tx["max_len"],
            hidden_act=tx["activation"],
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=im["width"],
            intermediate_size=im["mlp_dim"],
            num_hidden_layers=im["depth"],
            num_attention_heads=im["num_heads"],
            image_size=mcfg["image_size"],
            patch_size=im["patch_size"],
            hidden_act=im["activation"],
        ),
        projection_dim=mcfg["embed_dim"],
    )
    return CLIPModel(cfg)


def torch_runner(model: str, batch: int, compiled: bool, threads: int) -> tuple[dict, callable]:
    """HF CLIPModel, float32 on CPU (or the first CUDA device), one AdamW step with the mmjax config's
    gradient clipping (1.0), on a batch of the same shapes."""
    import torch

    torch.set_num_threads(threads)
    mcfg = model_config(model)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = hf_clip(mcfg).to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    rs = np.random.RandomState(0)
    s, length = mcfg["image_size"], mcfg["text"]["max_len"]
    pixels = torch.tensor(rs.uniform(-1, 1, (batch, 3, s, s)).astype(np.float32), device=dev)
    ids = torch.tensor(rs.randint(3, mcfg["text"]["vocab_size"], (batch, length)), device=dev)
    fwd = torch.compile(net) if compiled else net

    def step():
        loss = fwd(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return float(loss.detach())  # a sync

    return _torch_variant(
        dict(
            lever="torch.compile" if compiled else "torch eager",
            dtype="float32",
            framework=f"HF CLIPModel (torch {torch.__version__}, {dev})",
        ),
        model,
        batch,
        step,
        compiled,
    )


def _torch_variant(row: dict, model: str, batch: int, step, compiled: bool) -> tuple[dict, callable]:
    """The row and runner of a torch reference: two first steps (the first includes torch.compile's
    compilation, reported as the difference), then ``run_step`` as the mmjax variants have it."""
    row.update(
        model=model,
        batch_per_device=batch,
        items_per_step=batch,
        unit="pairs/s",
        temp_mib=float("nan"),
        flops_per_step=flops_lib.two_tower_train_flops(model_config(model), batch),
    )
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    row["compile_s"] = max(first - (time.perf_counter() - t0), 0.0) if compiled else 0.0

    def run_step():
        row["loss"] = step()

    return row, run_step


def open_clip_runner(
    model: str, batch: int, compiled: bool = True, device: str = "cuda"
) -> tuple[dict, callable]:
    """open_clip at the same architecture, bf16 autocast (+ torch.compile), on ``device`` (the benchmark
    uses it on CUDA; "cpu" checks the code path). Raises RuntimeError with the reason when open_clip or
    the device is missing."""
    import importlib.util

    import torch

    if importlib.util.find_spec("open_clip") is None:
        raise RuntimeError("open_clip is not installed (pip install open_clip_torch)")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    import open_clip

    names = {
        "clip-vit-b16": "ViT-B-16-quickgelu",
        "clip-vit-b32": "ViT-B-32-quickgelu",
        "clip-vit-l14": "ViT-L-14-quickgelu",
    }
    if model not in names:
        raise RuntimeError(f"no open_clip architecture named for {model}; use one of {', '.join(names)}")
    net = open_clip.create_model(names[model]).to(device).train()
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(
        net.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, fused=True
    )
    mcfg = model_config(model)
    s, length = mcfg["image_size"], mcfg["text"]["max_len"]
    images = torch.randn(batch, 3, s, s, device=device)
    text = torch.randint(3, mcfg["text"]["vocab_size"], (batch, length), device=device)
    fwd = torch.compile(net) if compiled else net

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            img, txt, scale = fwd(images, text)
            loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    name = "open_clip bf16 autocast" + (" + torch.compile" if compiled else ", eager")
    return _torch_variant(
        dict(
            lever=name,
            dtype="bf16 autocast",
            framework=f"open_clip {open_clip.__version__} (torch {torch.__version__}, {device})",
        ),
        model,
        batch,
        step,
        compiled,
    )


# ------------------------------------------------------------------------------------------- driver
def xla_flags_child(args, spec: str) -> dict:
    """Variant ``spec`` (which names xla_gpu_flags) in a child process with XLA_GPU_FLAGS added to
    XLA_FLAGS: the child runs the variant without it, so XLA flags unknown to this XLA cannot abort us."""
    levers, batch = parse_variant(spec)
    rest = "+".join(sorted(levers - {"xla_gpu_flags"})) or "baseline"
    out = os.path.join(args.out, "_xla_gpu_flags")
    env = dict(
        os.environ,
        _MMJAX_BENCH_CHILD="1",
        XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + " ".join(XLA_GPU_FLAGS)).strip(),
    )
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--model",
        args.model,
        "--batch",
        str(batch or args.batch),
        "--steps",
        str(args.steps),
        "--levers",
        rest,
        "--out",
        out,
        "--peak-n",
        str(args.peak_n or 8192),
    ]
    subprocess.run(cmd, env=env, check=True)
    with open(os.path.join(out, f"{jax.default_backend()}_{args.model}.csv")) as f:
        row = next(csv.DictReader(f))
    keep = (
        "model",
        "framework",
        "dtype",
        "batch_per_device",
        "flops_per_step",
        "items_per_step",
        "unit",
        "compile_s",
        "temp_mib",
        "step_ms",
        "step_ms_min",
        "loss",
    )
    row = {
        k: (v if k in ("model", "framework", "dtype", "unit") else float(v))
        for k, v in row.items()
        if k in keep
    }
    return dict(row, lever=spec, note="child process; timed there, not interleaved")


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it), for one line of the results."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def guarded(row: dict, run):
    """``run`` that records its first exception in ``row["failed"]`` (e.g. out of memory) and is a no-op
    after it, so that one variant's failure does not stop the others."""

    def call():
        if "failed" not in row:
            try:
                run()
            except Exception as e:  # reported in the results
                row["failed"] = first_line(e)

    return call


COLUMNS = [
    "model",
    "lever",
    "framework",
    "dtype",
    "batch_per_device",
    "compile_s",
    "step_ms",
    "step_ms_min",
    "throughput",
    "unit",
    "tflop_per_step",
    "tflops_per_device",
    "mfu_vs_measured_fp32",
    "mfu_vs_measured_bf16",
    "mfu_vs_datasheet_bf16",
    "temp_mib",
    "loss",
    "note",
]


def finish(row: dict, peaks: dict, n_dev: int, datasheet: float | None) -> dict:
    s = row["step_ms"] / 1e3
    tflops = (
        row["flops_per_step"] / s / n_dev / 1e12
        if not row["framework"].startswith(("HF", "open_clip"))
        else row["flops_per_step"] / s / 1e12
    )  # torch runs on one device
    row.update(
        throughput=row["items_per_step"] / s,
        tflop_per_step=row["flops_per_step"] / 1e12,
        tflops_per_device=tflops,
        mfu_vs_measured_fp32=tflops * 1e12 / peaks["fp32"],
        mfu_vs_measured_bf16=tflops * 1e12 / peaks["bf16"],
        mfu_vs_datasheet_bf16=tflops * 1e12 / datasheet if datasheet else float("nan"),
    )
    row.setdefault("note", "")
    return row


def fmt(v, digits=3):
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


# The targets, checked on the fastest mmjax variant of a run: (what, threshold, reference row).
# "mfu": MFU against the datasheet bf16 peak (the measured bf16 peak where the datasheet is unknown);
# "ratio": mmjax pairs/s over the reference row's.
TARGETS = {
    "clip-vit-b16": [("mfu", 0.40, None), ("ratio", 2.0, "open_clip bf16 autocast + torch.compile")],
    "llava-b16-base": [("mfu", 0.35, None)],
    "clip-small": [("ratio", 1.5, "torch eager")],
}


def target_lines(model: str, rows: list[dict]) -> list[str]:
    """A markdown table of the issue's targets for ``model``, measured on its fastest mmjax variant:
    value, threshold and whether it is met; "not measured" where the run lacks what a target needs."""
    mine = [r for r in rows if r["framework"].startswith("mmjax")]
    if model not in TARGETS or not mine:
        return []
    best = max(mine, key=lambda r: r["throughput"])
    lines = [
        "",
        f"Targets (fastest mmjax variant: {best['lever']}):",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for kind, threshold, ref in TARGETS[model]:
        if kind == "mfu":
            datasheet = best["mfu_vs_datasheet_bf16"] == best["mfu_vs_datasheet_bf16"]
            value = best["mfu_vs_datasheet_bf16"] if datasheet else best["mfu_vs_measured_bf16"]
            peak = "datasheet" if datasheet else "measured"
            name = f"MFU >= {100 * threshold:.0f} % (vs the {peak} bf16 peak)"
            shown = f"{100 * value:.1f} %"
        else:
            other = [r for r in rows if r["lever"] == ref]
            name = f"pairs/s >= {threshold:g}x {ref}"
            if not other:
                lines.append(f"| {name} | not measured (no {ref} row) | – |")
                continue
            value = best["throughput"] / other[0]["throughput"]
            shown = f"{value:.2f}x"
        lines.append(f"| {name} | {shown} | {'yes' if value >= threshold else '**no**'} |")
    return lines


def markdown(rows, header: list[str], ratios: list[tuple[str, str, float]]) -> str:
    cols = [
        "lever",
        "framework",
        "dtype",
        "batch/dev",
        "compile s",
        "step ms median (min)",
        "throughput",
        "TFLOP/s/dev",
        "MFU vs measured fp32 peak",
        "MFU vs measured bf16 peak",
        "MFU vs datasheet bf16",
        "temp MiB",
        "loss",
        "note",
    ]
    lines = header + ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["lever"],
                    r["framework"],
                    r["dtype"],
                    str(int(r["batch_per_device"])),
                    fmt(r["compile_s"]),
                    f"{fmt(r['step_ms'])} ({fmt(r['step_ms_min'])})",
                    f"{fmt(r['throughput'])} {r['unit']}",
                    fmt(r["tflops_per_device"]),
                    f"{100 * r['mfu_vs_measured_fp32']:.1f} %",
                    f"{100 * r['mfu_vs_measured_bf16']:.1f} %",
                    "n/a"
                    if r["mfu_vs_datasheet_bf16"] != r["mfu_vs_datasheet_bf16"]
                    else f"{100 * r['mfu_vs_datasheet_bf16']:.1f} %",
                    fmt(r["temp_mib"]),
                    fmt(r.get("loss", float("nan")), 4),
                    r.get("note", ""),
                ]
            )
            + " |"
        )
    if ratios:
        lines += ["", "| mmjax variant | torch variant | mmjax / torch throughput |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {x:.2f}x |" for a, b, x in ratios]
    lines += target_lines(rows[0]["model"], rows) if rows else []
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--model",
        default="clip-small",
        help=f"one of {', '.join(sorted(BENCH_MODELS))} or a named mmjax two_tower/early_fusion model",
    )
    parser.add_argument("--batch", type=int, default=32, help="batch per device")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument(
        "--levers", default="baseline", help=f"comma-separated: {', '.join(LEVERS)}; or 'all'"
    )
    parser.add_argument(
        "--compare-torch",
        action="store_true",
        help="add HF CLIPModel (eager, torch.compile) and, on CUDA, open_clip",
    )
    parser.add_argument(
        "--torch-compile",
        choices=("on", "off"),
        default="on",
        help="with --compare-torch: also time torch.compile (minutes of compiling on CPU)",
    )
    parser.add_argument("--peak-n", type=int, default=None, help="matmul size of the peak measurement")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="prepare no further variant once this many seconds have passed (for a time-limited "
        "machine); the skipped ones are listed in the results",
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "benchmarks", "results"))
    parser.add_argument(
        "--tag", default="", help="appended to the results' file names: <platform>_<model>_<tag>"
    )
    args = parser.parse_args(argv[1:])
    levers = list(LEVERS) if args.levers == "all" else [x for x in args.levers.split(",") if x]
    if not levers:
        parser.error("--levers: name at least one variant")
    for spec in levers:
        try:
            parse_variant(spec)
        except ValueError as e:
            parser.error(f"--levers: {e}")
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be positive")
    try:
        mcfg = model_config(args.model)
    except ValueError as e:
        parser.error(str(e))

    backend, n_dev = jax.default_backend(), jax.device_count()
    dev = jax.devices()[0]
    started = time.perf_counter()
    rows, runners, skipped, children = [], [], [], []

    def over_budget(what: str) -> bool:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            skipped.append(f"{what}: not run (--budget-s {args.budget_s:g} spent)")
            return True
        return False

    def add(what: str, make):
        """Prepare one variant (compile it, or the torch model's first steps); a failure is one line."""
        if over_budget(what):
            return
        print(f"preparing {args.model} / {what} ...", file=sys.stderr)
        try:
            row, run = make()
        except Exception as e:  # e.g. out of memory, no C++ compiler for inductor
            skipped.append(f"{what}: failed ({first_line(e)})")
            return
        print(f"  ready ({row['compile_s']:.1f} s to compile)", file=sys.stderr)
        rows.append(row)
        runners.append(guarded(row, run))

    # The references first, so that a --budget-s leaves them in and drops levers instead.
    if args.compare_torch:
        if mcfg["type"] != "two_tower":
            skipped.append("--compare-torch: only two-tower (CLIP) models have a torch reference")
        elif backend == "gpu":  # the GPU reference: open_clip in bf16 autocast, compiled (and eager)
            for compiled in (True, False) if args.torch_compile == "on" else (False,):
                add(
                    "open_clip" + (" + torch.compile" if compiled else " eager"),
                    lambda compiled=compiled: open_clip_runner(args.model, args.batch, compiled),
                )
        else:  # CPU: HF CLIPModel at identical dimensions
            for compiled in (False, True) if args.torch_compile == "on" else (False,):
                add(
                    "torch.compile" if compiled else "torch eager",
                    lambda compiled=compiled: torch_runner(
                        args.model, args.batch, compiled, max(1, os.cpu_count() or 1)
                    ),
                )
    for spec in levers:
        atoms, _ = parse_variant(spec)
        if "xla_gpu_flags" in atoms:
            if backend != "gpu" or os.environ.get("_MMJAX_BENCH_CHILD"):
                skipped.append(f"{spec}: skipped (xla_gpu_flags: GPU only; backend is {backend})")
            else:
                children.append(spec)  # after the interleaved timing, in a child process
            continue
        add(spec, lambda spec=spec: build_runner(args.model, spec, args.batch))
    print(f"timing {len(runners)} variants x {args.steps} steps ...", file=sys.stderr)
    times, _ = time_interleaved(runners, args.steps)
    for row, t in zip(rows, times):
        row["step_ms"], row["step_ms_min"] = 1e3 * statistics.median(t), 1e3 * min(t)
    skipped += [f"{r['lever']}: failed while running ({r['failed']})" for r in rows if "failed" in r]
    rows = [r for r in rows if "failed" not in r]
    for spec in children:
        if not over_budget(spec):
            try:
                rows.append(xla_flags_child(args, spec))
            except (subprocess.CalledProcessError, OSError, StopIteration) as e:
                skipped.append(f"{spec}: failed in its child process ({type(e).__name__}: {e})")
    rows.sort(key=lambda r: not r["framework"].startswith("mmjax"))  # mmjax's variants, then the references
    print("measuring the matmul peaks ...", file=sys.stderr)
    peaks = measure_peaks(args.peak_n)
    datasheet = datasheet_peak(dev.device_kind)
    rows = [finish(r, peaks, n_dev, datasheet) for r in rows]

    ratios = []
    base = [r for r in rows if r["framework"].startswith("mmjax")]
    picks = [b for b in base if b["lever"] in ("baseline", "bf16")]  # and the fastest variant
    picks += [b for b in sorted(base, key=lambda b: -b["throughput"])[:1] if b not in picks]
    for r in rows:
        if not r["framework"].startswith("mmjax"):
            for b in picks:
                ratios.append((f"{b['lever']} ({b['dtype']})", r["lever"], b["throughput"] / r["throughput"]))

    import flax
    import jaxlib
    import optax

    versions = {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
    }
    try:
        import torch
        import transformers

        versions.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    command = "python " + " ".join([os.path.relpath(os.path.abspath(__file__), ROOT), *argv[1:]])
    cpu = platform.processor() or platform.machine()
    header = [
        f"# Train-step benchmark: {args.model} on {backend}",
        "",
        f"- device: {n_dev} x {dev.device_kind} ({backend}; host {cpu}, {os.cpu_count()} cores)",
        f"- software: Python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{command}`",
        f"- measured matmul peak ({peaks['n']}x{peaks['n']}, same run): "
        f"fp32 {peaks['fp32'] / 1e12:.3g} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3g} TFLOP/s per device; "
        f"datasheet bf16: {'%.0f TFLOP/s' % (datasheet / 1e12) if datasheet else 'unknown for this device'}",
        f"- analytic FLOPs per step (experiments/benchmarks/flops.py, 3 x forward): "
        f"{rows[0]['tflop_per_step'] * 1e3:.4g} GFLOP"
        if rows
        else "",
        f"- timing: one warm-up step each, then {args.steps} steps per variant, interleaved round-robin; "
        "median (min)",
    ]
    header += [f"- {s}" for s in skipped]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{backend}_{args.model}" + (f"_{args.tag}" if args.tag else ""))
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, header, ratios))
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(
            f, fieldnames=COLUMNS + ["device", "versions", "date", "command"], extrasaction="ignore"
        )
        w.writeheader()
        for r in rows:
            w.writerow(
                dict(
                    r,
                    device=f"{n_dev} x {dev.device_kind}",
                    versions=json.dumps(versions),
                    date=time.strftime("%Y-%m-%d"),
                    command=command,
                )
            )
    print(markdown(rows, header, ratios))
    print(f"wrote {stem}.md, {stem}.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
