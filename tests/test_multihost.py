"""Multi-host training: 2 processes x 4 devices, joined by ``jax.distributed``, train exactly as
1 process x 8 devices; incomplete multi-host settings fail with one clear line."""

import json
import os
import subprocess
import sys
import time

import pytest

from mmjax import config as config_lib
from mmjax import distributed
from mmjax.config import ConfigError
from mmjax.data import shapes_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/clip_shapes.py:tiny"

# The real entry point (``python -m mmjax.train`` runs ``train.main(sys.argv)``); afterwards each process
# checks that initialising again is a no-op and that ``sharding.global_batch`` put its local rows at its
# own block of the global batch, in process order (the contrastive loss does not change when rows are
# permuted, so equal losses alone would not show this).
WORKER = (
    """
import sys
import numpy as np
import jax
from jax.experimental import multihost_utils
from mmjax import config as config_lib, distributed, sharding, train

code = train.main(["mmjax.train", *sys.argv[1:]])
if code == 0:
    assert distributed.initialize(None) == (jax.process_count() > 1)  # a second call changes nothing
    cfg = config_lib.load_file(%r)
    mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding)
    n, p, size = jax.process_count(), jax.process_index(), cfg.batch_size
    rows = np.arange(p * size // n, (p + 1) * size // n, dtype=np.int32)
    local = sharding.global_batch({"row": rows}, mesh, rules)["row"]
    placed = multihost_utils.process_allgather(local, tiled=True)
    if not np.array_equal(placed, np.arange(size)):
        print(f"global batch rows in the wrong order: {placed.tolist()}", file=sys.stderr)
        code = 3
sys.exit(code)
"""
    % CONFIG
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, data_dir, num_processes, devices_per_process, log_dir):
    """Start ``num_processes`` trainers of the tiny config, each with its own simulated CPU devices."""
    args = [
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.total_steps=6",
        "--config.log_every=2",
        "--config.checkpoint_every=3",
        "--config.eval.num_examples=16",
        "--config.eval.batch_size=16",
    ]
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    # Unoptimised CPU code compiles ~5x faster (seconds instead of ~30 s) and gives the same losses here.
    flags += [
        f"--xla_force_host_platform_device_count={devices_per_process}",
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
    ]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices_per_process),
        XLA_FLAGS=" ".join(flags),
    )
    for key in distributed.ENV.values():
        env.pop(key, None)
    port = _free_port()
    procs = []
    for i in range(num_processes):
        extra = (
            [
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                f"--config.distributed.num_processes={num_processes}",
                f"--config.distributed.process_id={i}",
            ]
            if num_processes > 1
            else []
        )
        err = open(os.path.join(log_dir, f"{num_processes}x{devices_per_process}_{i}.stderr"), "w+")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, *args, *extra],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                ),
                err,
            )
        )
    return procs


def _tail(err, chars=3000) -> str:
    err.seek(0)
    return err.read()[-chars:]


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_processes_train_like_one(tmp_path):
    cfg = config_lib.load_file(os.path.join(ROOT, CONFIG)).data
    data_dir = str(tmp_path / "tfds")  # built once here, so the processes don't race to build it
    shapes_builder.ensure_built(
        data_dir,
        seed=cfg.seed,
        image_size=cfg.image_size,
        num_train=cfg.num_train,
        num_validation=cfg.num_validation,
        num_test=cfg.num_test,
    )
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    # All three processes at once: the 2-process run mostly waits on its collectives.
    procs = _launch(one, data_dir, 1, 8, tmp_path) + _launch(two, data_dir, 2, 4, tmp_path)
    deadline, failed = time.monotonic() + 300, []  # a process whose partner died waits in a collective
    try:
        for i, (proc, _) in enumerate(procs):
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode != 0:
                failed.append(i)
        names = ["1x8", "2x4 process 0", "2x4 process 1"]
        assert not failed, "\n".join(
            f"--- {names[i]} exited {procs[i][0].returncode} (-9: killed at the "
            f"300 s deadline); stderr tail:\n{_tail(procs[i][1])}"
            for i in failed
        )
    finally:
        for proc, err in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()

    want, got = _metrics(one), _metrics(two)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 4, 6]
    for a, b in zip(want, got):
        assert a.keys() == b.keys() and "loss" in a
        for key in a.keys() - {"step", "examples_per_sec"}:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    # Process 0 wrote the evaluation; a rounding-level difference could move one of the 16 examples.
    with open(os.path.join(one, "results.json")) as f1, open(os.path.join(two, "results.json")) as f2:
        r1, r2 = json.load(f1), json.load(f2)
    assert r1.keys() == r2.keys() and r2["steps"] == 6
    for key in r1.keys() - {"train_seconds"}:
        assert r2[key] == (
            pytest.approx(r1[key], abs=1 / 16 + 1e-9) if isinstance(r1[key], float) else r1[key]
        ), key
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["3", "6"]


@pytest.fixture
def clean_env(monkeypatch):
    for key in (*distributed.ENV.values(), *distributed._TPU_ENV):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "cfg,env,message",
    [
        (
            dict(coordinator_address="127.0.0.1:1234"),
            {},
            "a coordinator address needs num_processes and process_id too",
        ),
        (
            dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2),
            {},
            r"process_id 2 is outside \[0, num_processes=2\)",
        ),
        (
            dict(num_processes=2, process_id=0),
            {},
            "num_processes/process_id are set but no coordinator address",
        ),
        (dict(coordinator_address="localhost", num_processes=2, process_id=0), {}, "has no port"),
        (
            {},
            {"MMJAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "MMJAX_NUM_PROCESSES": "2"},
            "a coordinator address needs num_processes and process_id too",
        ),
        (
            {},
            {
                "MMJAX_COORDINATOR_ADDRESS": "127.0.0.1:1234",
                "MMJAX_NUM_PROCESSES": "two",
                "MMJAX_PROCESS_ID": "0",
            },
            "MMJAX_NUM_PROCESSES must be an integer, got 'two'",
        ),
    ],
)
def test_incomplete_settings_are_config_errors(clean_env, cfg, env, message):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        distributed.initialize(
            dict(dict(coordinator_address=None, num_processes=None, process_id=None), **cfg)
        )


def test_config_overrides_environment(clean_env):
    clean_env.setenv("MMJAX_COORDINATOR_ADDRESS", "10.0.0.1:99")
    clean_env.setenv("MMJAX_PROCESS_ID", "1")
    assert distributed.settings(dict(coordinator_address=None, num_processes=4, process_id=3)) == dict(
        coordinator_address="10.0.0.1:99", num_processes=4, process_id=3
    )


def test_nothing_set_is_one_process(clean_env):
    if distributed.on_cloud_tpu():
        pytest.skip("on Cloud TPU an empty config means: let JAX find the processes")
    assert distributed.initialize(None) is False
    assert (
        distributed.initialize(dict(coordinator_address=None, num_processes=None, process_id=None)) is False
    )
