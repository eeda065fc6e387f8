"""End-to-end training on the tiny config: the loss falls, outputs are written, bad command lines fail with
one clear line. (Exact resume after a kill: tests/test_reliability.py.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import TRAINED, read_metrics, tiny_config

from mmjax import train
from mmjax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loss_falls(trained):
    workdir, _ = trained
    losses = [r["loss"] for r in read_metrics(workdir)]
    assert len(losses) == 15
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2])


def test_outputs_are_written(trained):
    workdir, results = trained
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == results
    for key in ("zero_shot_top1", "zero_shot_top5", "i2t_r1", "t2i_r1", "i2t_r10", "steps", "train_seconds"):
        assert key in results
    assert results["steps"] == 30
    assert 0 <= results["zero_shot_top1"] <= results["zero_shot_top5"] <= 1
    # zero-shot on validation (seen pairs) beside test (held-out pairs), and per attribute on both
    for prefix in ("", "validation_"):
        assert 0 <= results[f"{prefix}zero_shot_top1"] <= results[f"{prefix}zero_shot_top5"] <= 1
        for attr in ("colour", "shape"):
            assert results[f"{prefix}zero_shot_top1"] <= results[f"{prefix}zero_shot_{attr}_accuracy"] <= 1
    report = open(os.path.join(workdir, "report.md")).read()
    assert "![loss curve](loss.png)" in report and "zero_shot_top1" in report
    for png in ("loss.png", "similarity.png"):
        with open(os.path.join(workdir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tb")))
    record = read_metrics(workdir)[-1]
    assert record["step"] == 30 and {"loss", "lr", "grad_norm", "examples_per_sec"} <= set(record)


def test_rerun_of_a_finished_run_only_evaluates(trained, data_dir):
    workdir, results = trained
    again = train.train_and_evaluate(tiny_config(data_dir, **TRAINED), workdir)
    assert again["zero_shot_top1"] == results["zero_shot_top1"]
    assert again["train_seconds"] == results["train_seconds"] > 0  # kept in the checkpoint, exactly
    assert len(read_metrics(workdir)) == 15


def test_batch_not_divisible_by_devices(data_dir, tmp_path):
    cfg = tiny_config(data_dir, batch_size=12)
    with pytest.raises(ConfigError, match="batch_size 12 is not divisible by the data-parallel size 8"):
        train.train_and_evaluate(cfg, str(tmp_path / "w"))


def run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "mmjax.train", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.optimizer.lrr=1"], "error: unknown config key 'optimizer.lrr': optimizer has keys"),
        (
            ["--config.model.image.patch_size=7"],
            "error: ViT: image size 64x64 is not divisible by patch size 7",
        ),
        (
            ["--config.model.text.num_heads=3"],
            "error: TextTransformer: width 32 is not divisible by num_heads 3",
        ),
        (["--workdir=/nonexistent/parent/run"], "error: workdir parent '/nonexistent/parent' does not exist"),
        (
            ["--config.data.name=imagenet"],
            "error: unknown dataset 'imagenet'; valid names: caltech101, cifar10, cifar100, coco_captions, ",
        ),
        (
            ["--config.attention=flash"],
            "error: attention='flash' is not an attention kernel; use one of default, xla, cudnn",
        ),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
    base = ["--config=configs/clip_shapes.py:tiny", f"--workdir={tmp_path / 'w'}"]
    if args[0].startswith("--workdir"):
        base = base[:1]
    proc = run_cli(*base, *args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message), proc.stderr
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "name", ["clip_shapes", "siglip_shapes", "llava_shapes", "flamingo_shapes", "lm_shapes"]
)
def test_every_config_names_the_attention_kernel(name):
    from mmjax import config as config_lib

    assert config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py")).attention == "default"


def test_config_attention_reaches_every_traced_function(data_dir, tmp_path, monkeypatch):
    """--config.attention=cudnn is in force while the train step and the evaluation are traced (on CPU it
    falls back to the default kernel, with one warning)."""
    from mmjax.models import layers

    seen = []
    original = layers.attention

    def spy(*args, **kwargs):
        seen.append(layers._attention_impl)
        return original(*args, **kwargs)

    monkeypatch.setattr(layers, "attention", spy)
    monkeypatch.setattr(layers, "_warned", set())
    cfg = tiny_config(data_dir, attention="cudnn", total_steps=2, log_every=1, checkpoint_every=2)
    with pytest.warns(UserWarning, match=r"cuDNN unavailable \(backend is cpu\)"):
        results = train.train_and_evaluate(cfg, str(tmp_path / "w"))
    assert np.isfinite(results["zero_shot_top1"])
    assert seen and set(seen) == {"cudnn"}
    assert layers._attention_impl is None  # restored after the run
