"""The one train loop of mmjax, for every task.

    python -m mmjax.train --config=configs/clip_shapes.py --workdir=DIR [--config.KEY=VALUE ...]

writes ``DIR/metrics.jsonl`` (one JSON object per logged step), TensorBoard events in ``DIR/tb``,
checkpoints in ``DIR/checkpoints`` (rerunning the same command resumes from the latest),
``DIR/results.json`` (the final evaluation) and ``DIR/report.md`` with its plots.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax import optimizer as optimizer_lib
from mmjax import distributed, sharding, tasks
from mmjax.config import ConfigError


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_train_step(task, tx, seed: int, trainable=None):
    """``train_step(state, batch) -> (state, metrics)``: one optimizer step on a global batch.

    ``trainable`` (a tree of bools like the parameters, from ``optimizer.trainable``) marks frozen
    parameters: their gradients are never computed (XLA drops the unused work) nor counted in
    ``grad_norm``; the optimizer leaves them unchanged and keeps no state for them."""

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch, rng)
        if trainable is not None:
            grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


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


class MetricsLog:
    """Metrics as JSON lines and TensorBoard events; only process 0 writes."""

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        self.history = []  # process 0's (it rewrites the file below: another process could read half)
        if self.active and os.path.exists(self.path):  # keep what was logged up to the restored checkpoint
            with open(self.path) as f:
                self.history = [r for r in map(json.loads, f) if r["step"] <= resume_step]
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
    workdir = os.path.abspath(os.path.expanduser(workdir))
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise ConfigError(f"workdir parent {parent!r} does not exist; create it or choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"workdir {workdir!r} is not writable; choose another --workdir")
    return workdir


def train_and_evaluate(config, workdir: str, *, stop_at: int | None = None) -> dict | None:
    """Train ``config`` in ``workdir`` (resuming if a checkpoint is there), evaluate, report.

    ``stop_at`` ends the run early after that step with a checkpoint, as a preemption would (tests);
    the final evaluation then does not run and ``None`` is returned.
    """
    from tqdm.auto import tqdm

    from mmjax.checkpoint import Checkpointer

    workdir = check_workdir(workdir)
    distributed.initialize(config.get("distributed"))  # before anything asks JAX for devices
    task = tasks.get_task(config)
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config.sharding)
    dp = sharding.data_parallel_size(mesh, rules)
    if config.batch_size % dp or config.batch_size % jax.process_count():
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the data-parallel size {dp} "
                          f"and process count {jax.process_count()}; choose a multiple of both")

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        tx = optimizer_lib.make(config.optimizer, config.total_steps, jax.eval_shape(task.init, jax.random.key(0)))
        state, state_shardings = init_state(task, tx, config.seed, mesh, rules)
        loader = task.train_loader(config.batch_size, config.seed)
        data_iter = iter(loader)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
        start = ckpt.latest_step() or 0
        if start:
            state = ckpt.restore(start, state, data_iter)
            print(f"resumed from {ckpt.directory}/{start}", file=sys.stderr)
        else:  # a fresh run may start from other runs' weights
            state = state.replace(params=load_init_from(config, state.params))
        log = MetricsLog(workdir, start)

        trainable = optimizer_lib.trainable(config.optimizer, state.params)
        step_fn = jax.jit(make_train_step(task, tx, config.seed, trainable), in_shardings=(state_shardings, None),
                          out_shardings=(state_shardings, None), donate_argnums=0)
        lr_schedule = optimizer_lib.schedule(config.optimizer, config.total_steps)
        train_seconds = 0.0
        t_log, n_log = time.perf_counter(), 0
        bar = tqdm(total=config.total_steps, initial=start, desc="train", disable=jax.process_index() != 0,
                   dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        for step in range(start + 1, config.total_steps + 1):
            t0 = time.perf_counter()
            batch = sharding.global_batch(next(data_iter), mesh, rules)
            state, metrics = step_fn(state, batch)
            n_log += 1
            if step % config.log_every == 0 or step == config.total_steps:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                metrics["examples_per_sec"] = n_log * config.batch_size / (now - t_log)
                metrics["lr"] = lr_schedule(step - 1)
                log.write(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", ex_s=f"{metrics['examples_per_sec']:.0f}")
                t_log, n_log = now, 0
            if step % config.checkpoint_every == 0 or step in (config.total_steps, stop_at):
                ckpt.save(step, state, data_iter, config.to_dict())
            bar.update(1)
            train_seconds += time.perf_counter() - t0
            if step == stop_at:
                break
        bar.close()
        ckpt.wait()
        ckpt.close()
        log.close()
        if stop_at is not None and stop_at < config.total_steps:
            return None
        done = {"steps": int(config.total_steps), "train_seconds": round(train_seconds, 2)}
        results = task.evaluate(state.params, workdir, log.history, done)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"results: {workdir}/results.json; report: {workdir}/report.md", file=sys.stderr)
    return results


def main(argv: list[str]) -> int:
    from mmjax import config as config_lib

    try:
        rest, overrides = config_lib.split_overrides(argv[1:])
        usage = "usage: python -m mmjax.train --config=configs/FILE.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]"
        args = {}
        for arg in rest:
            name, eq, value = arg.removeprefix("--").partition("=")
            if not arg.startswith("--") or not eq or name not in ("config", "workdir"):
                raise ConfigError(f"{usage}; unexpected {arg!r}")
            args[name] = value
        if set(args) != {"config", "workdir"}:
            raise ConfigError(usage)
        config = config_lib.load_file(args["config"])
        for key, value in overrides:
            config_lib.override(config, key, value)
        config.lock()
        results = train_and_evaluate(config, args["workdir"])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


def run():
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
