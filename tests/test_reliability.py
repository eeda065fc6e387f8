"""Reliability of the train loop: a run killed with SIGKILL and rerun continues bit for bit; a signal ends a
run with a checkpoint and a rerun resumes; a non-finite loss or gradient stops the run or skips the
update (``nan_policy``) and is never checkpointed; an unreadable checkpoint is moved aside and the
previous one resumed; an old checkpoint outlives the save of its successor; bad input (damaged records,
texts too long, a dead loader worker, an unwritable workdir) is one clear error line or a count."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import TRAINED, read_metrics, tiny_config

from mmjax import sharding, tasks, train
from mmjax.checkpoint import Checkpointer
from mmjax.config import ConfigError
from mmjax.metrics_log import last_logged_step
from mmjax.preemption import StopRequest
from mmjax.run import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A failed Orbax restore leaves TensorStore reads behind whose callbacks later find Orbax's event loop closed.
LEFTOVER_READS = pytest.mark.filterwarnings(
    r"ignore:(?s)Exception ignored in.*Event loop is closed:pytest.PytestUnraisableExceptionWarning"
)


def train_command(workdir, data_dir, settings: dict) -> list[str]:
    """``python -m mmjax.train`` of the tiny config on ``data_dir`` with ``--config.KEY=VALUE`` settings."""
    return [
        sys.executable,
        "-m",
        "mmjax.train",
        "--config=configs/clip_shapes.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *(f"--config.{k}={v}" for k, v in settings.items()),
    ]


def steps_on_disk(workdir):
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())


def load_state(workdir, step):
    """A checkpoint's train state as a dict of numpy arrays."""
    checkpointer = ocp.StandardCheckpointer()
    try:
        return jax.device_get(checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "state")))
    finally:
        checkpointer.close()


# --- exact resume after a crash -------------------------------------------------------------------------


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in records]


def test_kill_9_then_rerun_continues_bit_for_bit(trained, data_dir, tmp_path):
    """``kill -9`` at a random moment after the first checkpoint; the rerun logs, ends with and evaluates
    exactly what the uninterrupted run (``trained``) did: every metric but the throughput, every array of
    the final train state (so the data order too: Grain's state is restored)."""
    reference, reference_results = trained
    seed = int(np.random.default_rng().integers(1 << 31))  # a random moment, reproducible from the message
    rng = np.random.default_rng(seed)
    kill_after, delay = int(rng.integers(TRAINED["checkpoint_every"], 27)), float(rng.uniform(0, 0.3))
    workdir, log = str(tmp_path / "killed"), tmp_path / "stderr.txt"
    first_checkpoint = os.path.join(workdir, "checkpoints", str(TRAINED["checkpoint_every"]))
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            train_command(workdir, data_dir, TRAINED),
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and (
            last_logged_step(workdir) < kill_after or not os.path.isdir(first_checkpoint)
        ):
            assert time.monotonic() < deadline, f"step {kill_after} not logged after 120 s"
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()
        assert proc.wait(60) == -signal.SIGKILL, (
            f"the run ended before it was killed (seed {seed}): {log.read_text()}"
        )
    finally:
        proc.kill()
    resume_from = steps_on_disk(workdir)[-1]
    results = train.train_and_evaluate(tiny_config(data_dir, **TRAINED), workdir)
    why = f"killed after step {kill_after} + {delay:.2f} s, resumed from {resume_from} (seed {seed})"
    assert without_timing(read_metrics(workdir)) == without_timing(read_metrics(reference)), why
    final = TRAINED["total_steps"]
    expected, got = load_state(reference, final), load_state(workdir, final)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b, err_msg=why)
    drop = lambda r: {k: v for k, v in r.items() if k != "train_seconds"}  # noqa: E731
    assert drop(results) == drop(reference_results), why


# --- graceful stop ----------------------------------------------------------------------------------------

STOPPED = dict(
    total_steps=400, log_every=1, checkpoint_every=2
)  # the run below; 400 steps would take minutes


@pytest.fixture(scope="module")
def stopped(data_dir, tmp_path_factory):
    """``python -m mmjax.train`` sent SIGTERM once step 3 is logged: ``(workdir, returncode, stdout,
    stderr)``. Its checkpoints (the periodic ones and the one of the last step) also serve the
    checkpoint-safety tests."""
    workdir = str(tmp_path_factory.mktemp("stopped"))
    proc = subprocess.Popen(
        train_command(workdir, data_dir, STOPPED),
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and last_logged_step(workdir) < 3:
            assert time.monotonic() < deadline, "step 3 not logged after 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return workdir, proc.returncode, out, err


def test_sigterm_stops_after_a_checkpoint_and_a_rerun_resumes(stopped, data_dir, tmp_path, capsys):
    """Exit status 0 and one line naming the checkpoint of the last step (with its data iterator state); the
    same config in the same workdir continues after that step."""
    workdir, returncode, out, err = stopped
    assert returncode == 0, err
    assert (
        "zero_shot_top1" not in out and "null" not in out.splitlines()
    )  # no results: the run did not finish
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1 and lines[0] == err.splitlines()[-1], err
    match = re.fullmatch(
        r"stopped by SIGTERM after step (\d+); checkpoint: (\S+); rerun the same command to resume", lines[0]
    )
    assert match, lines[0]
    step = int(match.group(1))
    assert 3 <= step < 400
    assert match.group(2) == os.path.join(workdir, "checkpoints", str(step))
    assert steps_on_disk(workdir)[-1] == step
    assert {"state", "data", "config"} <= set(os.listdir(match.group(2)))
    logged = [r["step"] for r in read_metrics(workdir)]
    assert logged == list(range(1, step + 1))

    workdir = copy_run(workdir, tmp_path)
    assert train.train_and_evaluate(tiny_config(data_dir, **STOPPED), workdir, stop_at=step + 2) is None
    assert f"resumed from {workdir}/checkpoints/{step}" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, step + 3))
    assert steps_on_disk(workdir)[-1] == step + 2


def test_stop_request_handles_signals_and_restores_handlers():
    """The first signal only asks to stop; a second acts as if we were not there; the previous handlers come
    back on leaving, also on an exception."""
    # Known previous handlers (whatever ran earlier in this process may have left others): Python's default
    # for SIGINT (raises KeyboardInterrupt), a recorder for SIGTERM.
    seen = []
    outer = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        before = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
        with StopRequest() as stop:
            assert all(signal.getsignal(sig) == stop._handle for sig in StopRequest.SIGNALS)
            assert not stop.requested(1)
            signal.raise_signal(signal.SIGINT)
            assert stop.requested(2) and stop.reason == "SIGINT"
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS} == before
        with StopRequest() as stop:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert stop.reason == "SIGTERM" and seen == [signal.SIGTERM]
        with pytest.raises(ZeroDivisionError):
            with StopRequest():
                1 / 0
        assert {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS} == before
    finally:
        for sig, handler in outer.items():
            signal.signal(sig, handler)


def test_stop_request_outside_the_main_thread_installs_nothing():
    seen, errors = [], []

    def run():
        try:
            with StopRequest() as stop:
                seen.append({sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS})
                seen.append(stop.requested(1))
        except Exception as e:  # reported below
            errors.append(e)

    before = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors and seen == [before, False]


def test_stop_request_uses_the_preemption_sync_point_with_several_processes(monkeypatch, capsys):
    from jax.experimental import multihost_utils

    # The installed JAX has the API, and a single process (no jax.distributed client) is never preempted.
    assert multihost_utils.reached_preemption_sync_point(1) is False
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 3)
    before = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    with StopRequest(multiprocess=True) as stop:
        assert {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS} == before  # JAX owns SIGTERM
        assert [stop.requested(s) for s in (1, 2, 3)] == [False, False, True]
        assert stop.reason == "a preemption notice"

    def disabled(step):
        raise RuntimeError("Preemption sync manager has not been initialized.")

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", disabled)
    with StopRequest(multiprocess=True) as stop:
        assert [stop.requested(s) for s in (1, 2)] == [False, False]
    assert capsys.readouterr().err.count("warning: JAX's preemption sync point is unavailable") == 1


# --- non-finite loss or gradient --------------------------------------------------------------------------


@pytest.fixture
def nan_at(monkeypatch):
    """``nan_at({3, 5})``: the batches of those steps (counted from 1 in this process) hold NaN images."""

    def install(steps):
        calls = {"n": 0}
        original = sharding.global_batch

        def global_batch(local_batch, mesh, rules):
            calls["n"] += 1
            if calls["n"] in steps:
                local_batch = dict(local_batch, image=np.full_like(local_batch["image"], np.nan))
            return original(local_batch, mesh, rules)

        monkeypatch.setattr(sharding, "global_batch", global_batch)

    return install


def test_nan_stop_raises_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, nan_at):
    """Found at the checkpoint of step 6 (before any log step): nothing non-finite is saved."""
    nan_at({5})
    workdir = str(tmp_path / "run")
    cfg = tiny_config(data_dir, total_steps=8, log_every=8, checkpoint_every=2, keep_checkpoints=5)
    with pytest.raises(train.NonFiniteError) as info:
        train.train_and_evaluate(cfg, workdir)
    assert str(info.value) == (
        f"non-finite loss or gradient at step 5; the last good checkpoint is {workdir}/"
        f'checkpoints/4 (set nan_policy="skip" to skip such steps)'
    )
    assert steps_on_disk(workdir) == [2, 4]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(load_state(workdir, 4)))
    assert read_metrics(workdir) == []


def test_nan_skip_leaves_the_state_unchanged_and_counts_skipped_steps(
    data_dir, tmp_path, nan_at, monkeypatch
):
    nan_at({2, 3})
    # The final evaluation only passes the loop's counts through to results.json; skip its work here.
    monkeypatch.setattr(
        tasks.ContrastiveTask, "evaluate", lambda self, params, workdir, history, done: dict(done)
    )
    workdir = str(tmp_path / "run")
    cfg = tiny_config(
        data_dir, total_steps=4, log_every=2, checkpoint_every=1, keep_checkpoints=10, nan_policy="skip"
    )
    results = train.train_and_evaluate(cfg, workdir)
    assert results["skipped_steps"] == 2
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["skipped_steps"] == 2
    assert [(r["step"], r["skipped_steps"]) for r in read_metrics(workdir)] == [(2, 1), (4, 2)]
    states = {s: load_state(workdir, s) for s in range(1, 5)}
    for before, after in ((1, 2), (2, 3)):  # a skipped step changes nothing but the step count
        assert states[after]["step"] == states[before]["step"] + 1
        for key in ("params", "opt_state"):
            jax.tree.map(np.testing.assert_array_equal, states[before][key], states[after][key])
    assert not np.array_equal(
        states[3]["params"]["text_proj"]["kernel"], states[4]["params"]["text_proj"]["kernel"]
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        assert [ckpt.restore_info(s)["skipped_steps"] for s in range(1, 5)] == [0, 1, 2, 2]
    finally:
        ckpt.close()


def test_all_finite():
    assert bool(train.all_finite({"a": np.ones(3, np.float32), "n": np.arange(3)}))
    assert not bool(train.all_finite({"a": np.array([1.0, np.inf], np.float32), "n": np.arange(3)}))
    assert not bool(train.all_finite([np.ones(2, np.float32), np.array(np.nan, np.float32)]))


def test_unknown_nan_policy_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = train.main(
        [
            "mmjax.train",
            "--config=configs/clip_shapes.py:tiny",
            f"--workdir={tmp_path / 'w'}",
            "--config.nan_policy=ignore",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: nan_policy 'ignore' is unknown; use \"stop\" (raise at a non-finite loss or gradient) "
        'or "skip" (skip that update)'
    ]


def test_main_exit_status_for_non_finite_and_stopped_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = ["mmjax.train", "--config=configs/clip_shapes.py:tiny", f"--workdir={tmp_path / 'w'}"]

    def non_finite(config, workdir):
        raise train.NonFiniteError(
            "non-finite loss or gradient at step 3; no checkpoint was written before it"
        )

    monkeypatch.setattr(train, "train_and_evaluate", non_finite)
    assert train.main(argv) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "error: non-finite loss or gradient at step 3; no checkpoint was written before it"
    ]
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: None)  # stopped by a signal
    assert train.main(argv) == 0
    assert capsys.readouterr().out == ""


# --- checkpoint safety ------------------------------------------------------------------------------------


def copy_run(workdir, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return copy


def damage(step_dir, how):
    """Damage a checkpoint's train state (Orbax's OCDBT layout: ``_METADATA`` is the tree's JSON,
    ``manifest.ocdbt`` the root of the array store, ``ocdbt.process_0/d/*`` array data files)."""
    state = os.path.join(step_dir, "state")
    if how == "delete manifest":
        os.remove(os.path.join(state, "manifest.ocdbt"))
    elif how == "truncate metadata":
        with open(os.path.join(state, "_METADATA"), "r+b") as f:
            f.truncate(100)
    else:  # "truncate data"
        files = glob.glob(os.path.join(state, "ocdbt.process_0", "d", "*"))
        assert files
        for name in files:
            with open(name, "r+b") as f:
                f.truncate(10)


def restore_target(cfg):
    """``(abstract train state, fresh data iterator)`` for ``cfg``, as ``train_and_evaluate`` builds them."""
    run = build_run(cfg)
    return run.abstract, iter(run.task.train_loader(cfg.batch_size, cfg.seed))


@LEFTOVER_READS
def test_resume_falls_back_from_an_unreadable_checkpoint(stopped, data_dir, tmp_path, capsys):
    """The damaged latest checkpoint is moved aside with one warning; training resumes from the previous
    one."""
    workdir = copy_run(stopped[0], tmp_path)
    good, bad = steps_on_disk(workdir)[-2:]
    damage(os.path.join(workdir, "checkpoints", str(bad)), "delete manifest")
    assert train.train_and_evaluate(tiny_config(data_dir, **STOPPED), workdir, stop_at=good + 1) is None
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    ckpts = os.path.join(workdir, "checkpoints")
    assert re.fullmatch(
        rf"warning: checkpoint {ckpts}/{bad} is unreadable \(.+\); resuming from {ckpts}/{good} "
        rf"\(moved it to {ckpts}/{bad}\.corrupt-[0-9T]+\)",
        warnings[0],
    ), warnings[0]
    assert f"resumed from {ckpts}/{good}" in err
    assert steps_on_disk(workdir) == [good, good + 1]
    assert len(glob.glob(os.path.join(ckpts, f"{bad}.corrupt-*", "state"))) == 1  # kept, not deleted
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, good + 2))


@LEFTOVER_READS
@pytest.mark.parametrize("how", ["delete manifest", "truncate metadata", "truncate data"])
def test_restore_latest_moves_unreadable_checkpoints_aside(stopped, data_dir, tmp_path, capsys, how):
    workdir = copy_run(stopped[0], tmp_path)
    ckpts = os.path.join(workdir, "checkpoints")
    good, bad = steps_on_disk(workdir)[-2:]
    os.makedirs(os.path.join(ckpts, "1000.orbax-checkpoint-tmp", "state"))  # a save cut short: not a step
    damage(os.path.join(ckpts, str(bad)), how)
    cfg = tiny_config(data_dir, **STOPPED)
    abstract, data_iter = restore_target(cfg)
    ckpt = Checkpointer(ckpts)
    try:
        step, state, info = ckpt.restore_latest(abstract, data_iter)
        assert (step, int(state.step), info["skipped_steps"], info["truncated_examples"]) == (
            good,
            good,
            0,
            0,
        )
        assert ckpt.latest_step() == good
    finally:
        ckpt.close()
    assert capsys.readouterr().err.count("warning: checkpoint") == 1

    damage(
        os.path.join(ckpts, str(good)), how
    )  # now none is readable: start from scratch, iterator untouched
    abstract, data_iter = restore_target(cfg)
    initial = data_iter.get_state()
    ckpt = Checkpointer(ckpts)
    try:
        assert ckpt.restore_latest(abstract, data_iter) == (None, abstract, {})
        assert ckpt.latest_step() is None
    finally:
        ckpt.close()
    assert data_iter.get_state() == initial
    err = capsys.readouterr().err
    assert (
        f"warning: checkpoint {ckpts}/{good} is unreadable" in err and "no readable checkpoint remains" in err
    )
    assert steps_on_disk(workdir) == [] and len(glob.glob(os.path.join(ckpts, "*.corrupt-*"))) == 2


def test_restore_latest_retries_a_read_that_fails_once(stopped, data_dir, tmp_path, monkeypatch, capsys):
    """A read that fails for a moment (a network filesystem) does not move a good checkpoint aside."""
    workdir = copy_run(stopped[0], tmp_path)
    before = steps_on_disk(workdir)
    failures, restore = [], Checkpointer.restore

    def flaky(self, *args, **kwargs):
        if not failures:
            failures.append(1)
            raise OSError("connection reset (simulated)")
        return restore(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "restore", flaky)
    abstract, data_iter = restore_target(tiny_config(data_dir, **STOPPED))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        step, _, _ = ckpt.restore_latest(abstract, data_iter)
    finally:
        ckpt.close()
    assert failures and step == before[-1] and steps_on_disk(workdir) == before
    assert "unreadable" not in capsys.readouterr().err


def test_restore_latest_refuses_a_checkpoint_of_another_model(stopped, data_dir, tmp_path):
    """A config mismatch is the user's error, not damage: nothing is moved."""
    workdir = copy_run(stopped[0], tmp_path)
    before = steps_on_disk(workdir)
    abstract, data_iter = restore_target(tiny_config(data_dir, **STOPPED, **{"model.embed_dim": 16}))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        with pytest.raises(
            ConfigError,
            match=rf"checkpoint .*/{before[-1]} holds a train state of other shapes than "
            r"this config's model and optimizer \(params/image_proj/kernel: \(2048, 32\) there, "
            r"\(2048, 16\) here\); resume with the config it was written with",
        ):
            ckpt.restore_latest(abstract, data_iter)
    finally:
        ckpt.close()
    assert steps_on_disk(workdir) == before


def test_old_checkpoint_outlives_the_save_of_its_successor(tmp_path, monkeypatch):
    """With max_to_keep=1, Orbax deletes step 1 only once step 2 is committed; a failed commit deletes
    nothing.

    The commit (the rename of ``<step>.orbax-checkpoint-tmp`` to ``<step>``) is held back to look in
    between."""
    from etils import epath

    directory = str(tmp_path / "checkpoints")
    path_cls, rename = type(epath.Path(directory)), type(epath.Path(directory)).rename
    release, committing = threading.Event(), threading.Event()

    def held_rename(self, target):
        if epath.Path(target).name == "2":
            committing.set()
            assert release.wait(60)
        if epath.Path(target).name == "3":
            raise OSError("disk full (simulated)")
        return rename(self, target)

    state = {"w": jax.numpy.arange(64.0)}
    ckpt = Checkpointer(directory, max_to_keep=1)
    try:
        ckpt.save(1, state)
        ckpt.wait()
        monkeypatch.setattr(path_cls, "rename", held_rename)
        ckpt.save(2, {"w": state["w"] + 1})  # returns while the commit runs in the background
        assert committing.wait(60)
        assert steps_on_disk(str(tmp_path)) == [1]  # step 2 is still <2>.orbax-checkpoint-tmp
        other = Checkpointer(directory)  # what a restart now would see
        try:
            assert other.latest_step() == 1
            np.testing.assert_array_equal(other.restore(1, state)["w"], state["w"])
        finally:
            other.close()
        release.set()
        ckpt.wait()
        assert steps_on_disk(str(tmp_path)) == [2]

        ckpt.save(3, {"w": state["w"] + 2})
        with pytest.raises(OSError, match="simulated"):
            ckpt.wait()
        assert steps_on_disk(str(tmp_path)) == [2]
    finally:
        release.set()
        monkeypatch.undo()
        ckpt.close()


# --- bad input ----------------------------------------------------------------------------------------------


def record(**changes):
    """Record 7 of a tiny shapes train split, as the data source returns it, with ``changes``."""
    from mmjax.data import shapes_builder

    ex = shapes_builder.encode_example(0, "train", 7, 32)
    as_bytes = lambda v: [t.encode() for t in v]  # noqa: E731
    rec = {
        "id": np.int64(7),
        "image_png": ex["image_png"],
        "label": np.int64(ex["label"]),
        **{k: as_bytes(ex[k]) for k in ("captions", "questions", "answers")},
    }
    return {**rec, **changes}


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            dict(image_png=b"\x89PNG\r\n\x1a\n cut short"),
            "train record 7: its image bytes do not decode "
            "(not an image Pillow can read); the dataset is damaged: regenerate it (delete its directory "
            "under data.data_dir) or drop the record",
        ),
        (
            dict(captions=[b"a red circle", b" "]),
            "train record 7: captions[1] is empty; repair the dataset or drop the record",
        ),
    ],
)
def test_damaged_records_are_one_line_errors(changes, message):
    from mmjax.config import DataError
    from mmjax.data import pipeline
    from mmjax.data.tokenizer import WordTokenizer

    tok = WordTokenizer.for_shapes()
    contrastive = pipeline.TrainPreprocess(tok, 32, 0.5, "random")
    vlm = pipeline.VlmPreprocess(tok, 4, 32, 0.5, "what is in the image", 1.0, "random")
    for preprocess in (contrastive, vlm):
        preprocess.random_map(record(), np.random.default_rng(0))  # the undamaged record is fine
        with pytest.raises(DataError) as e:
            preprocess.random_map(record(**changes), np.random.default_rng(0))
        assert str(e.value) == message
    vlm.caption_prob = 0.0  # VQA examples check the questions and answers
    with pytest.raises(DataError, match=r"^train record 7: answers\[0\] is empty"):
        vlm.random_map(record(answers=[b""]), np.random.default_rng(0))


def test_a_damaged_dataset_stops_training_with_one_line(tmp_path, monkeypatch, capsys):
    """Through the command's entry point, with a Grain worker process reading: exit status 1, one line."""
    from mmjax.data import shapes_builder

    encode = shapes_builder.encode_example

    def cut(seed, split, index, size):
        return {**encode(seed, split, index, size), "image_png": b"\x89PNG"}

    monkeypatch.setattr(shapes_builder, "encode_example", cut)
    cfg = tiny_config(str(tmp_path / "tfds"))
    shapes_builder.ensure_built(
        cfg.data.data_dir,
        image_size=cfg.data.image_size,
        num_train=cfg.data.num_train,
        num_validation=cfg.data.num_validation,
        num_test=cfg.data.num_test,
    )
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    code = train.main(
        [
            "mmjax.train",
            "--config=configs/clip_shapes.py:tiny",
            f"--workdir={tmp_path / 'w'}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
            "--config.data.worker_count=1",
        ]
    )
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(
        r"error: the data loader failed at step 1: train record \d+: its image bytes do not decode "
        r"\(not an image Pillow can read\); .* or drop the record; no checkpoint was written before it",
        errors[0],
    ), errors


def test_a_dead_loader_worker_is_an_error_not_a_hang(data_dir):
    import psutil

    cfg = tiny_config(data_dir, **{"data.worker_count": 1})
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    data_iter = iter(tasks.get_task(cfg).train_loader(cfg.batch_size, cfg.seed))
    next(data_iter)
    workers = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and "spawn_main" in " ".join(p.cmdline())
    ]
    assert workers
    for worker in workers:
        worker.kill()

    class NoCheckpoints:
        directory = "unused"

        def wait(self):
            pass

        def latest_step(self):
            return None

    outcome = []

    def read():  # batches already prepared still come; then the error
        try:
            for step in range(2, 50):
                train.next_batch(data_iter, step, NoCheckpoints())
        except Exception as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(120)
    assert not reader.is_alive(), "the loader hung for 120 s after its worker died"
    assert outcome, "48 batches came after the worker died"
    assert re.fullmatch(
        r"the data loader failed at step \d+: RuntimeError: Worker process was terminated "
        r"unexpectedly.*; no checkpoint was written before it",
        str(outcome[0]),
    ), outcome
    data_iter.close()


def test_texts_cut_to_fit_are_counted_and_reported(data_dir, tmp_path, capsys):
    """``truncated_examples`` (cumulative in metrics.jsonl, total in results.json) equals the loader's own
    count of cut rows over the steps run; one warning says how to avoid it."""
    cfg = tiny_config(data_dir, total_steps=4, log_every=2, checkpoint_every=4, **{"data.max_len": 14})
    results = train.train_and_evaluate(cfg, str(tmp_path))
    data_iter = iter(tasks.get_task(cfg).train_loader(cfg.batch_size, cfg.seed))
    cut = np.cumsum([next(data_iter)["truncated"].sum() for _ in range(4)])
    assert 0 < cut[1] < cut[3] < 4 * cfg.batch_size
    assert [(r["step"], r["truncated_examples"]) for r in read_metrics(str(tmp_path))] == [
        (2, cut[1]),
        (4, cut[3]),
    ]
    assert results["truncated_examples"] == cut[3]
    assert capsys.readouterr().err.count("longer than data.max_len=14 and are cut to fit") == 1


def test_an_unwritable_workdir_is_a_one_line_error_before_any_work(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a filesystem that refuses directories
        workdir = "/sys/mmjax-run"
    else:
        os.chmod(tmp_path, 0o500)
        workdir = str(tmp_path / "run")
    with pytest.raises(
        ConfigError, match=rf"^workdir '{workdir}' is not writable \(.+\); choose another --workdir$"
    ):
        train.check_workdir(workdir)
    assert not os.path.exists(workdir)
