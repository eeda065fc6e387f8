"""The one train loop of mmjax, for every task.

    python -m mmjax.train --config=configs/clip_shapes.py --workdir=DIR [--config.KEY=VALUE ...]

writes ``DIR/metrics.jsonl`` (one JSON object per logged step), TensorBoard events in ``DIR/tb``,
checkpoints in ``DIR/checkpoints`` (rerunning the same command resumes from the latest readable one),
``DIR/results.json`` (the final evaluation) and ``DIR/report.md`` with its plots. ``--help`` lists the
configs in ``configs/`` with their arguments; ``--print_config`` (in place of ``--workdir``) prints the
config, after any overrides, as ``KEY=VALUE`` lines and exits without building anything.

SIGTERM or SIGINT ends the run after the current step with a checkpoint (exit status 0; rerun to resume);
a non-finite loss or gradient stops it (``nan_policy="stop"``, exit status 1) or skips that update
(``nan_policy="skip"``). See docs/reliability.md.

Read from the top: ``train_and_evaluate`` checks the config and the workdir, builds the run
(``mmjax.run.build_run``), trains it (``train``: restore or initialise, then step, log, checkpoint) and
evaluates it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

from mmjax import distributed, sharding
from mmjax.config import ConfigError, DataError
from mmjax.metrics_log import MetricsLog
from mmjax.preemption import StopRequest
from mmjax.run import Run, TrainState, build_run


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or train state under ``nan_policy="stop"``; the message is one line."""


def train_and_evaluate(config, workdir: str, *, stop_at: int | None = None) -> dict | None:
    """Train ``config`` in ``workdir`` (resuming from the latest readable checkpoint), evaluate, report.

    ``stop_at`` ends the run early after that step with a checkpoint, as a preemption would (tests); so
    do SIGTERM and SIGINT after the current step (``StopRequest``), printing where the checkpoint is. The
    final evaluation then does not run and ``None`` is returned. A non-finite loss or gradient raises
    ``NonFiniteError`` or skips the update, by ``config.nan_policy``; a non-finite state is never saved.
    """
    workdir = check_workdir(workdir)
    distributed.initialize(config.get("distributed"))  # before anything asks JAX for devices
    check_dataset(config.data)
    run = build_run(config)
    check_batch_size(run)
    # the attention kernel is chosen when a function is traced: every step and the evaluation below
    with run.context():
        trained = train(run, workdir, stop_at=stop_at)
        if trained is None:  # stopped early, with a checkpoint
            return None
        state, history, tally = trained
        results = run.task.evaluate(state.params, workdir, history, tally.summary(run))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"results: {workdir}/results.json; report: {workdir}/report.md", file=sys.stderr)
    return results


def check_workdir(workdir: str) -> str:
    """``workdir`` made absolute and created; an error before any work if it cannot be written to."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise ConfigError(f"workdir parent {parent!r} does not exist; create it or choose another --workdir")
    probe = os.path.join(workdir, f".mmjax-write-test-{os.getpid()}")
    try:  # a real write: os.access says yes to root on a read-only filesystem
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"workdir {workdir!r} is not writable ({e.strerror or e}); choose another --workdir"
        ) from None
    return workdir


def check_dataset(data_cfg) -> None:
    """An unknown ``data.name`` fails now, as one line, before anything is built."""
    from mmjax.data import registry  # lazy: a run that trains needs it, --print_config does not

    try:
        registry.get_dataset(data_cfg)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def check_batch_size(run: Run) -> None:
    """``config.batch_size`` must split evenly over the data-parallel devices and over the processes."""
    batch_size, dp = run.config.batch_size, sharding.data_parallel_size(run.mesh, run.rules)
    if batch_size % dp or batch_size % jax.process_count():
        raise ConfigError(
            f"batch_size {batch_size} is not divisible by the data-parallel size {dp} "
            f"and process count {jax.process_count()}; choose a multiple of both"
        )


def train(run: Run, workdir: str, *, stop_at: int | None) -> tuple[TrainState, list[dict], Tally] | None:
    """Train ``run`` in ``workdir`` from its latest readable checkpoint (or from the start) to
    ``config.total_steps``, logging every ``log_every`` steps and checkpointing every ``checkpoint_every``.

    Returns ``(state, history, tally)``: the final state, the logged records and the counts; or None
    when the run stopped before the end, with a checkpoint: after ``stop_at``, or asked to by a signal or
    a preemption notice (``StopRequest``)."""
    from mmjax.checkpoint import Checkpointer

    config = run.config
    data_iter = iter(run.task.train_loader(config.batch_size, config.seed))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    log = None
    try:
        start, state, info = restore_or_init(run, ckpt, data_iter)
        log = MetricsLog(workdir, start)
        tally = Tally.from_info(info)
        step = start
        with progress_bar(config, start) as bar, StopRequest(multiprocess=jax.process_count() > 1) as stop:
            for step in range(start + 1, config.total_steps + 1):
                t0 = time.perf_counter()
                batch = run.global_batch(next_batch(data_iter, step, ckpt))
                state, metrics = run.train_step(state, batch)
                tally.add(step, metrics)
                if step % config.log_every == 0 or step == config.total_steps:
                    logged = log_metrics(run, ckpt, log, tally, step, metrics)
                    # refresh=False: shown at the bar's next redraw (every 1 s on a terminal, 30 s in a log
                    # file), so a log is not written a line per logged step
                    bar.set_postfix(
                        loss=f"{logged['loss']:.3f}", ex_s=f"{logged['examples_per_sec']:.0f}", refresh=False
                    )
                stopping = stop.requested(step)
                # Writing checkpoints is not training time; so the checkpoint's train_seconds is exactly
                # what this run reports, and a rerun of a finished run reports the same.
                tally.train_seconds += time.perf_counter() - t0
                if step % config.checkpoint_every == 0 or step in (config.total_steps, stop_at) or stopping:
                    save_checkpoint(run, ckpt, tally, step, state, data_iter)
                bar.update(1)
                if step == stop_at or stopping:
                    break
        ckpt.wait()
        if stop.reason is not None:
            if jax.process_index() == 0:
                print(
                    f"stopped by {stop.reason} after step {step}; checkpoint: {ckpt.directory}/"
                    f"{ckpt.latest_step()}; rerun the same command to resume",
                    file=sys.stderr,
                )
            return None
    finally:
        ckpt.close()  # waits for a save in flight, so the last good checkpoint is complete
        if log is not None:
            log.close()
    if stop_at is not None and stop_at < config.total_steps:
        return None
    return state, log.history, tally


def restore_or_init(run: Run, ckpt, data_iter) -> tuple[int, TrainState, dict]:
    """``(step, state, info)`` of the latest readable checkpoint, with ``data_iter`` set back to where it
    was; for a fresh run ``(0, run.init(), {})``: the initial state, with the weights ``config.init_from``
    names loaded from other runs."""
    start, state, info = ckpt.restore_latest(run.abstract, data_iter)
    if start is None:
        return 0, run.init(), {}
    print(f"resumed from {ckpt.directory}/{start}", file=sys.stderr)
    return start, state, info


def progress_bar(config, start: int):
    """The console's progress bar (process 0 only); a context manager that closes it."""
    from tqdm.auto import tqdm

    return tqdm(
        total=config.total_steps,
        initial=start,
        desc="train",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )


def next_batch(data_iter, step: int, ckpt) -> dict:
    """The next local batch; a failing data loader (a damaged record, a worker that died) is one
    ``DataError`` line naming the step and the last checkpoint (committed first), never a hang."""
    try:
        return next(data_iter)
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        cause = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {first_line}"
        raise DataError(f"the data loader failed at step {step}: {cause}; {_last_checkpoint(ckpt)}") from e


@dataclasses.dataclass
class Tally:
    """The loop's bookkeeping.

    Counted over all the runs that led here, and kept in each checkpoint's info: ``skipped_steps``
    (updates that ``nan_policy="skip"`` dropped), ``truncated_examples`` (training texts cut to fit
    ``data.max_len``) and ``train_seconds`` (in steps, not in checkpoint writes). ``pending``: each step's
    ``(step, finite, truncated)``, still on the device: fetched at log and checkpoint steps only, so that
    the loop does not wait for the device at every step. ``since_log`` steps ran since ``logged_at``."""

    skipped_steps: int = 0
    truncated_examples: int = 0
    train_seconds: float = 0.0
    pending: list = dataclasses.field(default_factory=list)
    since_log: int = 0
    logged_at: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def from_info(cls, info: dict) -> "Tally":
        """The counts a checkpoint's info holds (none: zeros), the clock started now."""
        return cls(
            skipped_steps=int(info.get("skipped_steps", 0)),
            truncated_examples=int(info.get("truncated_examples", 0)),
            train_seconds=float(info.get("train_seconds", 0.0)),
        )

    def info(self) -> dict:
        """The counts, for a checkpoint's info."""
        return {
            "skipped_steps": self.skipped_steps,
            "truncated_examples": self.truncated_examples,
            "train_seconds": self.train_seconds,
        }

    def summary(self, run: Run) -> dict:
        """What the final evaluation reports of the training (``results.json``)."""
        done = {
            "steps": int(run.config.total_steps),
            "train_seconds": round(self.train_seconds, 2),
            "truncated_examples": self.truncated_examples,
        }
        if run.nan_policy == "skip":
            done["skipped_steps"] = self.skipped_steps
        return done

    def add(self, step: int, metrics: dict) -> None:
        """Set ``step``'s ``finite`` flag and ``truncated`` count aside (taking them out of ``metrics``)."""
        self.pending.append((step, metrics.pop("finite"), metrics.pop("truncated", 0)))
        self.since_log += 1

    def settle(self, run: Run, ckpt) -> None:
        """Fetch ``pending`` and account for it: raise (``nan_policy="stop"``) or count (``"skip"``)
        non-finite steps; count truncated texts (one warning, the first time)."""
        fetched = jax.device_get(self.pending)
        self.pending.clear()
        bad = [s for s, ok, _ in fetched if not ok]
        cut = sum(int(n) for _, _, n in fetched)
        if bad and run.nan_policy == "stop":
            raise _nonfinite("loss or gradient", bad[0], ckpt, hint=True)
        self.skipped_steps += len(bad)
        if cut and not self.truncated_examples and jax.process_index() == 0:
            max_len = run.config.data.get("max_len", 32)
            print(
                f"warning: some training texts are longer than data.max_len={max_len} and are cut to fit; "
                "they are counted as truncated_examples in metrics.jsonl and results.json (raise "
                "data.max_len to keep them whole)",
                file=sys.stderr,
            )
        self.truncated_examples += cut

    def examples_per_sec(self, batch_size: int) -> float:
        """Examples per second since the last call (or the start); the clock restarts."""
        now = time.perf_counter()
        rate = self.since_log * batch_size / (now - self.logged_at)
        self.logged_at, self.since_log = now, 0
        return rate


def log_metrics(run: Run, ckpt, log: MetricsLog, tally: Tally, step: int, metrics: dict) -> dict:
    """Write ``step``'s metrics (fetched from the device, the steps before it settled first) with the
    throughput since the last logged step, the learning rate and the counts; returns the record."""
    tally.settle(run, ckpt)
    metrics = jax.device_get(metrics)
    metrics["examples_per_sec"] = tally.examples_per_sec(run.config.batch_size)
    metrics["lr"] = run.schedule(step - 1)
    metrics["truncated_examples"] = tally.truncated_examples
    if run.nan_policy == "skip":
        metrics["skipped_steps"] = tally.skipped_steps
    log.write(step, metrics)
    return metrics


def save_checkpoint(run: Run, ckpt, tally: Tally, step: int, state: TrainState, data_iter) -> None:
    """Checkpoint ``step``: the train state, the data iterator's position, the config and the counts. The
    steps before it are settled first, and a non-finite state is never saved."""
    tally.settle(run, ckpt)
    if not bool(all_finite(state)):  # one sync per checkpoint
        raise _nonfinite("train state (not saved)", step, ckpt, hint=False)
    ckpt.save(step, state, data_iter, run.config.to_dict(), info=tally.info())


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every floating-point value in ``tree`` is finite (one scalar; fetching it is one sync)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _last_checkpoint(ckpt) -> str:
    """Where the last good checkpoint is, in words for an error message (once a save in flight is
    committed)."""
    ckpt.wait()
    last = ckpt.latest_step()
    return (
        f"the last good checkpoint is {ckpt.directory}/{last}"
        if last is not None
        else "no checkpoint was written before it"
    )


def _nonfinite(what: str, step: int, ckpt, hint: bool) -> NonFiniteError:
    """The error for a non-finite ``what`` at ``step``, naming the last checkpoint."""
    return NonFiniteError(
        f"non-finite {what} at step {step}; {_last_checkpoint(ckpt)}"
        + (' (set nan_policy="skip" to skip such steps)' if hint else "")
    )


USAGE = "usage: python -m mmjax.train --config=configs/FILE.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]"

HELP = """{usage}
       python -m mmjax.train --config=configs/FILE.py[:ARG] [--config.KEY=VALUE ...] --print_config
       python -m mmjax.train --help

Trains the config's task in DIR and evaluates it: DIR/metrics.jsonl, DIR/tb, DIR/checkpoints,
DIR/results.json, DIR/report.md. Rerunning the same command resumes from the latest checkpoint.

  --config=FILE.py[:ARG]  an ml_collections config file; ARG is passed to its get_config(arg)
  --workdir=DIR           where the run writes (created if missing)
  --config.KEY=VALUE      set an existing key, e.g. --config.optimizer.lr=1e-3 (an unknown key is an error)
  --print_config          print the config (after any overrides) as KEY=VALUE lines and exit
  -h, --help              show this help and exit

{configs}

A config's keys and values: python -m mmjax.train --config=configs/FILE.py[:ARG] --print_config"""


def configs_dir() -> str | None:
    """``configs/`` in the working directory, else beside the ``mmjax`` package (a source checkout)."""
    for base in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        if os.path.isdir(os.path.join(base, "configs")):
            return os.path.join(base, "configs")
    return None


def help_text() -> str:
    """``--help``: the usage, the flags, and each config in ``configs_dir()`` with its purpose and
    arguments (``config.describe``; each file is read once)."""
    import glob
    import textwrap

    from mmjax import config as config_lib

    directory = configs_dir()
    entries = []  # (shown name, purpose, arguments)
    for path in sorted(glob.glob(os.path.join(directory, "*.py"))) if directory else []:
        try:
            with open(path) as f:
                source = f.read()
        except OSError:
            continue
        if "def get_config(" not in source:  # a shared piece (e.g. configs/common.py), not a config
            continue
        try:
            purpose, arguments = config_lib.describe(path, source=source)
        except (SyntaxError, ValueError) as e:
            purpose, arguments = f"(cannot read its docstring: {type(e).__name__})", []
        name = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
        entries.append((name, purpose, arguments))
    if not entries:
        return HELP.format(usage=USAGE, configs="configs: no configs/ directory found here or beside mmjax")
    width = max(len(name) for name, _, _ in entries) + 2
    lines = ["configs:"]
    for name, purpose, arguments in entries:
        text = textwrap.wrap(purpose, 106 - width) or [""]
        if arguments:
            text += textwrap.wrap("arguments: " + "  ".join(arguments), 106 - width)
        lines += [f"  {name:<{width}}{text[0]}", *(" " * (width + 2) + t for t in text[1:])]
    return HELP.format(usage=USAGE, configs="\n".join(lines))


def main(argv: list[str]) -> int:
    from mmjax import config as config_lib

    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print(help_text())
        return 0
    try:
        rest, overrides = config_lib.split_overrides(argv[1:])
        args = {}
        for arg in rest:
            name, eq, value = arg.removeprefix("--").partition("=")
            if arg == "--print_config":
                args["print_config"] = True
            elif not arg.startswith("--") or not eq or name not in ("config", "workdir"):
                raise ConfigError(f"unexpected {arg!r}; {USAGE} (--help lists the configs)")
            else:
                args[name] = value
        if "config" not in args or not ("workdir" in args or "print_config" in args):
            raise ConfigError(f"{USAGE} (--help lists the configs)")
        config = config_lib.load_file(args["config"])
        for key, value in overrides:
            config_lib.override(config, key, value)
        config.lock()
        if "print_config" in args:  # nothing is built, written or trained
            print("\n".join(config_lib.as_overrides(config)))
            return 0
        results = train_and_evaluate(config, args["workdir"])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if results is not None:  # None: stopped early (a signal); the line on stderr says how to resume
        print(json.dumps(results, indent=2))
    return 0


def run():
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
