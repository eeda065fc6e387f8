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
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax import optimizer as optimizer_lib
from mmjax import distributed, sharding, tasks
from mmjax.models import layers
from mmjax.config import ConfigError, DataError


NAN_POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or train state under ``nan_policy="stop"``; the message is one line."""


def nan_policy(config) -> str:
    """``config.nan_policy`` (default ``"stop"``), checked."""
    policy = config.get("nan_policy", "stop")
    if policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy {policy!r} is unknown; use \"stop\" (raise at a non-finite loss or gradient) "
                          "or \"skip\" (skip that update)")
    return policy


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def attention_implementation(config) -> str | None:
    """``config.attention`` as ``layers.attention_implementation`` takes it: "default" (JAX picks) is None,
    the others (``layers.ATTENTION_IMPLEMENTATIONS``: "xla", "cudnn") are passed on."""
    name = config.get("attention", "default")
    names = ["default", *[impl for impl in layers.ATTENTION_IMPLEMENTATIONS if impl]]
    if name not in names:
        raise ConfigError(f"attention={name!r} is not an attention kernel; use one of {', '.join(names)}")
    return None if name == "default" else name


def make_train_step(task, tx, seed: int, trainable=None, nan_policy: str = "stop"):
    """``train_step(state, batch) -> (state, metrics)``: one optimizer step on a global batch.

    ``trainable`` (a tree of bools like the parameters, from ``optimizer.trainable``) marks frozen
    parameters: their gradients are never computed (XLA drops the unused work) nor counted in
    ``grad_norm``; the optimizer leaves them unchanged and keeps no state for them.
    ``metrics["finite"]`` says whether the loss and the gradient norm are finite; with ``nan_policy="skip"``
    a step where they are not leaves parameters and optimizer state unchanged (the step count still
    advances, so the data moves on). ``metrics["truncated"]`` counts the batch's rows whose text was cut
    to fit (when the batch has a ``truncated`` field)."""

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch, rng)
        if trainable is not None:
            grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if nan_policy == "skip":
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params, opt_state = jax.tree.map(keep, params, state.params), jax.tree.map(keep, opt_state, state.opt_state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
        if "truncated" in batch:  # texts cut to fit data.max_len, in the whole global batch
            metrics["truncated"] = batch["truncated"].sum(dtype=jnp.int32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every floating-point value in ``tree`` is finite (one scalar; fetching it is one sync)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


class StopRequest:
    """Ends training after the current step, with a checkpoint, when asked to: on SIGTERM or SIGINT, and on a
    multi-host run when JAX's preemption sync point is reached.

    Use as a context manager around the loop and call ``requested(step)`` after each step. The handlers are
    installed on entering and the previous ones restored on leaving; only the main thread can install them
    (elsewhere none are). A second signal goes to the previous handler (by default SIGINT raises
    ``KeyboardInterrupt``, SIGTERM ends the process). With several processes no handlers are installed:
    a local signal would stop one process at a step the others do not stop at. There JAX's preemption
    service (on by default in ``jax.distributed``) catches SIGTERM and agrees on one step for all
    processes, which ``jax.experimental.multihost_utils.reached_preemption_sync_point`` reports."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, multiprocess: bool = False):
        self.reason: str | None = None
        self._previous: dict = {}
        self._multiprocess = multiprocess
        self._sync_point = None
        if multiprocess:
            from jax.experimental import multihost_utils

            self._sync_point = getattr(multihost_utils, "reached_preemption_sync_point", None)

    def __enter__(self) -> "StopRequest":
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not None:  # None: a handler installed outside Python; leave it
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._previous:
            sig, handler = self._previous.popitem()
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.reason is not None:  # asked twice: do what would have happened without us
            self._restore()
            signal.raise_signal(signum)
            return
        self.reason = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step`` (call after every step: the preemption sync point needs each one)."""
        if self._sync_point is not None:
            try:
                if self._sync_point(step) and self.reason is None:
                    self.reason = "a preemption notice"
            except Exception as e:  # e.g. RuntimeError: preemption service disabled; never fail training for it
                self._sync_point = None
                if jax.process_index() == 0:
                    print(f"warning: JAX's preemption sync point is unavailable ({type(e).__name__}: {e}); "
                          "a preemption will not checkpoint", file=sys.stderr)
        return self.reason is not None


def make_optimizer(config, task) -> optax.GradientTransformation:
    """``config.optimizer`` for ``task``'s parameters (only their structure is used: nothing is initialised)."""
    return optimizer_lib.make(config.optimizer, config.total_steps, jax.eval_shape(task.init, jax.random.key(0)))


def _init_fn(task, tx):
    def init(rng):
        params = task.init(rng)  # logically boxed
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def abstract_state(task, tx, mesh, rules):
    """``(abstract, shardings)``: the train state as ``jax.ShapeDtypeStruct`` s placed by ``rules`` on
    ``mesh``, computed without initialising anything (a restore target for any mesh)."""
    boxed = jax.eval_shape(_init_fn(task, tx), jax.random.key(0))
    shardings = sharding.tree_shardings(boxed, mesh, rules)
    values = jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, boxed,
                          is_leaf=lambda x: isinstance(x, nn.Partitioned))  # (nn.unbox would constrain)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), values, shardings)
    return abstract, shardings


def init_state(task, tx, seed: int, mesh, rules):
    """Initialise the train state directly with its sharding; returns ``(state, shardings)``."""
    _, shardings = abstract_state(task, tx, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(_init_fn(task, tx)(r)), out_shardings=shardings)(jax.random.key(seed))
    return state, shardings


def load_init_from(config, params):
    """``params`` with the parameters that ``config.init_from`` names loaded from other runs."""
    from mmjax.checkpoint import init_sources, load_params

    for source, regex in init_sources(config.get("init_from")):
        params = load_params(source, params, regex)
        print(f"loaded {tuple(regex)} from {source}", file=sys.stderr)
    return params


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file; a last line cut short (a process killed while writing it) is left out."""
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip() and i < len(lines) - 1:  # damage before the end is not a cut-short write
                raise
    return records


def last_logged_step(workdir: str) -> int:
    """The step of the last complete record of ``workdir``'s ``metrics.jsonl`` (0 if none yet); safe to call
    while a run is writing it (to watch a run from another process)."""
    path = os.path.join(workdir, "metrics.jsonl")
    records = read_jsonl(path) if os.path.exists(path) else []
    return records[-1]["step"] if records else 0


class MetricsLog:
    """Metrics as JSON lines and TensorBoard events; only process 0 writes."""

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        self.history = []  # process 0's (it rewrites the file below: another process could read half)
        if self.active and os.path.exists(self.path):  # keep what was logged up to the restored checkpoint
            self.history = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        self.tb = None
        if self.active:
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(record)
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


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
        raise ConfigError(f"workdir {workdir!r} is not writable ({e.strerror or e}); "
                          "choose another --workdir") from None
    return workdir


def next_batch(data_iter, step: int, ckpt) -> dict:
    """The next local batch; a failing data loader (a damaged record, a worker that died) is one
    ``DataError`` line naming the step and the last checkpoint (committed first), never a hang."""
    try:
        return next(data_iter)
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        cause = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {first_line}"
        raise DataError(f"the data loader failed at step {step}: {cause}; {_last_checkpoint(ckpt)}") from e


def _last_checkpoint(ckpt) -> str:
    """Where the last good checkpoint is, in words for an error message (once a save in flight is committed)."""
    ckpt.wait()
    last = ckpt.latest_step()
    return f"the last good checkpoint is {ckpt.directory}/{last}" if last is not None else \
        "no checkpoint was written before it"


def _nonfinite(what: str, step: int, ckpt, hint: bool) -> NonFiniteError:
    """The error for a non-finite ``what`` at ``step``, naming the last checkpoint."""
    return NonFiniteError(f"non-finite {what} at step {step}; {_last_checkpoint(ckpt)}"
                          + (' (set nan_policy="skip" to skip such steps)' if hint else ""))


def train_and_evaluate(config, workdir: str, *, stop_at: int | None = None) -> dict | None:
    """Train ``config`` in ``workdir`` (resuming from the latest readable checkpoint), evaluate, report.

    ``stop_at`` ends the run early after that step with a checkpoint, as a preemption would (tests); so
    do SIGTERM and SIGINT after the current step (``StopRequest``), printing where the checkpoint is. The
    final evaluation then does not run and ``None`` is returned. A non-finite loss or gradient raises
    ``NonFiniteError`` or skips the update, by ``config.nan_policy``; a non-finite state is never saved.
    """
    from tqdm.auto import tqdm

    from mmjax.checkpoint import Checkpointer

    workdir = check_workdir(workdir)
    policy = nan_policy(config)
    attention = attention_implementation(config)
    distributed.initialize(config.get("distributed"))  # before anything asks JAX for devices
    task = tasks.get_task(config)
    from mmjax.data import pipeline  # the data stack: needed from here on, not by the step above

    try:
        pipeline.get_dataset(config.data)  # an unknown data.name fails now, as one line
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config.sharding)
    dp = sharding.data_parallel_size(mesh, rules)
    if config.batch_size % dp or config.batch_size % jax.process_count():
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the data-parallel size {dp} "
                          f"and process count {jax.process_count()}; choose a multiple of both")

    # the attention kernel is chosen when a function is traced: every step and evaluation below
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), layers.attention_implementation(attention):
        tx = make_optimizer(config, task)
        state, state_shardings = init_state(task, tx, config.seed, mesh, rules)
        loader = task.train_loader(config.batch_size, config.seed)
        data_iter = iter(loader)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
        log = bar = None
        try:
            start, state, info = ckpt.restore_latest(state, data_iter)
            if start is not None:
                print(f"resumed from {ckpt.directory}/{start}", file=sys.stderr)
            else:  # a fresh run may start from other runs' weights
                start = 0
                state = state.replace(params=load_init_from(config, state.params))
            skipped = int(info.get("skipped_steps", 0))  # steps whose update nan_policy="skip" dropped
            truncated = int(info.get("truncated_examples", 0))  # training texts cut to fit data.max_len
            train_seconds = float(info.get("train_seconds", 0.0))  # over all the runs that led here
            log = MetricsLog(workdir, start)

            trainable = optimizer_lib.trainable(config.optimizer, state.params)
            step_fn = jax.jit(make_train_step(task, tx, config.seed, trainable, policy),
                              in_shardings=(state_shardings, None), out_shardings=(state_shardings, None),
                              donate_argnums=0)
            lr_schedule = optimizer_lib.schedule(config.optimizer, config.total_steps)
            t_log, n_log = time.perf_counter(), 0
            # (step, its "finite" flag, its truncated count), still on the device: fetched at log and checkpoint
            # steps only, so the loop does not wait for the device at every step
            pending = []

            def settle() -> None:
                """Fetch ``pending`` and account for it: raise (stop) or count (skip) non-finite steps; count
                truncated texts (one warning, the first time)."""
                nonlocal skipped, truncated
                fetched = jax.device_get(pending)
                pending.clear()
                bad = [s for s, ok, _ in fetched if not ok]
                cut = sum(int(n) for _, _, n in fetched)
                if bad and policy == "stop":
                    raise _nonfinite("loss or gradient", bad[0], ckpt, hint=True)
                skipped += len(bad)
                if cut and not truncated and jax.process_index() == 0:
                    max_len = config.data.get("max_len", 32)
                    print(f"warning: some training texts are longer than data.max_len={max_len} and are cut to fit; "
                          "they are counted as truncated_examples in metrics.jsonl and results.json (raise "
                          "data.max_len to keep them whole)", file=sys.stderr)
                truncated += cut

            bar = tqdm(total=config.total_steps, initial=start, desc="train", disable=jax.process_index() != 0,
                       dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
            step = start
            with StopRequest(multiprocess=jax.process_count() > 1) as stop:
                for step in range(start + 1, config.total_steps + 1):
                    t0 = time.perf_counter()
                    batch = sharding.global_batch(next_batch(data_iter, step, ckpt), mesh, rules)
                    state, metrics = step_fn(state, batch)
                    pending.append((step, metrics.pop("finite"), metrics.pop("truncated", 0)))
                    n_log += 1
                    if step % config.log_every == 0 or step == config.total_steps:
                        settle()
                        metrics = jax.device_get(metrics)
                        now = time.perf_counter()
                        metrics["examples_per_sec"] = n_log * config.batch_size / (now - t_log)
                        metrics["lr"] = lr_schedule(step - 1)
                        metrics["truncated_examples"] = truncated
                        if policy == "skip":
                            metrics["skipped_steps"] = skipped
                        log.write(step, metrics)
                        # refresh=False: shown at the bar's next redraw (every 1 s on a terminal, 30 s in a
                        # log file), so a log is not written a line per logged step
                        bar.set_postfix(loss=f"{metrics['loss']:.3f}", ex_s=f"{metrics['examples_per_sec']:.0f}",
                                        refresh=False)
                        t_log, n_log = now, 0
                    stopping = stop.requested(step)
                    # Writing checkpoints is not training time; so the checkpoint's train_seconds is exactly
                    # what this run reports, and a rerun of a finished run reports the same.
                    train_seconds += time.perf_counter() - t0
                    if step % config.checkpoint_every == 0 or step in (config.total_steps, stop_at) or stopping:
                        settle()
                        if not bool(all_finite(state)):  # one sync per checkpoint: never save a non-finite state
                            raise _nonfinite("train state (not saved)", step, ckpt, hint=False)
                        ckpt.save(step, state, data_iter, config.to_dict(),
                                  info={"skipped_steps": skipped, "truncated_examples": truncated,
                                        "train_seconds": train_seconds})
                    bar.update(1)
                    if step == stop_at or stopping:
                        break
            bar.close()
            ckpt.wait()
            if stop.reason is not None:
                if jax.process_index() == 0:
                    print(f"stopped by {stop.reason} after step {step}; checkpoint: {ckpt.directory}/"
                          f"{ckpt.latest_step()}; rerun the same command to resume", file=sys.stderr)
                return None
        finally:
            if bar is not None:
                bar.close()
            ckpt.close()  # waits for a save in flight, so the last good checkpoint is complete
            if log is not None:
                log.close()
        if stop_at is not None and stop_at < config.total_steps:
            return None
        done = {"steps": int(config.total_steps), "train_seconds": round(train_seconds, 2),
                "truncated_examples": truncated}
        if policy == "skip":
            done["skipped_steps"] = skipped
        results = task.evaluate(state.params, workdir, log.history, done)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"results: {workdir}/results.json; report: {workdir}/report.md", file=sys.stderr)
    return results


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


def _defines_get_config(path: str) -> bool:
    try:
        with open(path) as f:
            return "def get_config(" in f.read()
    except OSError:
        return False


def help_text() -> str:
    """``--help``: the usage, the flags, and each config in ``configs_dir()`` with its purpose and
    arguments (``config.describe``)."""
    import glob
    import textwrap

    from mmjax import config as config_lib

    directory = configs_dir()
    files = sorted(glob.glob(os.path.join(directory, "*.py"))) if directory else []
    files = [f for f in files if _defines_get_config(f)]  # not shared pieces (e.g. configs/common.py)
    if not files:
        return HELP.format(usage=USAGE, configs="configs: no configs/ directory found here or beside mmjax")
    names = [os.path.relpath(f) if f.startswith(os.getcwd() + os.sep) else f for f in files]
    width = max(len(n) for n in names) + 2
    lines = ["configs:"]
    for name, path in zip(names, files):
        try:
            purpose, arguments = config_lib.describe(path)
        except (OSError, SyntaxError, ValueError) as e:
            purpose, arguments = f"(cannot read its docstring: {type(e).__name__})", []
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
