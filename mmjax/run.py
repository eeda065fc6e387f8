"""One builder for a run: a config becomes its task, mesh, logical rules, optimizer, train state and jitted
train step.

    run = build_run(config)
    with run.context():  # the mesh, the logical rules and the attention kernel, read when a step is traced
        state = run.init()
        state, metrics = run.train_step(state, run.global_batch(local_batch))

Training (``mmjax.train``), the experiments, the notebooks and the tests all build their run here, so the
wiring (the state's and the batch's shardings, donation, frozen parameters, ``nan_policy``, the attention
kernel) is written once and cannot drift between copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax import optimizer as optimizer_lib
from mmjax import sharding, tasks
from mmjax.config import ConfigError
from mmjax.models import layers

NAN_POLICIES = ("stop", "skip")


@flax.struct.dataclass
class TrainState:
    """What a train step takes and returns, and a checkpoint holds: the step count (which also seeds the
    step's randomness), the parameters and the optimizer state."""

    step: jax.Array
    params: Any
    opt_state: Any


def nan_policy(config) -> str:
    """``config.nan_policy`` (default ``"stop"``), checked."""
    policy = config.get("nan_policy", "stop")
    if policy not in NAN_POLICIES:
        raise ConfigError(
            f'nan_policy {policy!r} is unknown; use "stop" (raise at a non-finite loss or '
            'gradient) or "skip" (skip that update)'
        )
    return policy


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

            def keep(new, old):
                return jnp.where(finite, new, old)

            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
        if "truncated" in batch:  # texts cut to fit data.max_len, in the whole global batch
            metrics["truncated"] = batch["truncated"].sum(dtype=jnp.int32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def _init_fn(task, tx):
    """``init(rng) -> TrainState`` at step 0, its parameters logically boxed (their placement is read
    from the boxes)."""

    def init(rng):
        params = task.init(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def _abstract_state(params, tx, mesh, rules):
    """``(abstract, shardings)``: the train state of the logically boxed abstract ``params`` as
    ``jax.ShapeDtypeStruct`` s placed by ``rules`` on ``mesh``, computed without initialising anything (a
    restore target for any mesh)."""
    boxed = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=jax.eval_shape(tx.init, params)
    )  # the optimizer state boxed like params
    shardings = sharding.tree_shardings(boxed, mesh, rules)
    values = jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        boxed,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )  # (nn.unbox would constrain)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), values, shardings
    )
    return abstract, shardings


def load_init_from(config, params):
    """``params`` with the parameters that ``config.init_from`` names loaded: from a Hugging Face model
    (``init_from.hf`` = its directory, ``hf_regex``: which parameters, default all) and from other runs."""
    if not config.get("init_from"):
        return params
    from mmjax.checkpoint import init_sources, load_hf_params, load_params  # Orbax: only where it loads

    hf_dir = config.init_from.get("hf")
    if hf_dir:  # an imported Hugging Face model first; the runs below may overwrite parts of it
        regex = tuple(config.init_from.get("hf_regex", None) or (".*",))
        params = load_hf_params(hf_dir, params, regex)
        print(f"loaded {regex} from the Hugging Face model {hf_dir}", file=sys.stderr)
    for source, regex in init_sources(config.init_from):
        params = load_params(source, params, regex)
        print(f"loaded {tuple(regex)} from {source}", file=sys.stderr)
    return params


@contextlib.contextmanager
def _context(mesh, rules, attention):
    """``Run.context()``, also for tracing the model while the run is built."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), layers.attention_implementation(attention):
        yield


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a config's training needs, built once by ``build_run``.

    Attributes:
      config: the config it was built from.
      task: ``tasks.get_task(config)``: model, loss, data and evaluation.
      mesh, rules: the device mesh (``config.mesh``) and the logical-axis rules (``config.sharding``).
      attention: the attention kernel that traced functions use (``config.attention``; None: JAX's choice).
      tx: the optimizer (``config.optimizer``); ``schedule``: its learning rate by step.
      trainable: a tree of bools like the parameters: False where ``optimizer.freeze_regex`` freezes one.
      nan_policy: ``config.nan_policy``: "stop" or "skip" (see ``make_train_step``).
      abstract: the train state as placed ``jax.ShapeDtypeStruct`` s (a restore target); ``shardings``: its
        ``NamedSharding`` s.
      batch_sharding: where a global batch goes: its leading axis split like the logical ``batch`` axis.
      step_fn: the pure ``train_step(state, batch) -> (state, metrics)`` (``make_train_step``).
      train_step: ``step_fn`` jitted with those shardings, the input state donated (unless built with
        ``donate=False``). Call it inside ``context()``: the mesh, the rules and the attention kernel are
        read when it is traced.
    """

    config: Any
    task: Any
    mesh: jax.sharding.Mesh
    rules: sharding.Rules
    attention: str | None
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    trainable: Any
    nan_policy: str
    abstract: TrainState
    shardings: TrainState
    batch_sharding: jax.sharding.NamedSharding
    step_fn: Callable
    train_step: Callable

    def context(self):
        """The mesh, the logical-axis rules and the attention kernel in force (``jax.set_mesh``,
        ``nn.logical_axis_rules``, ``layers.attention_implementation``): around every step, initialisation
        and evaluation of this run."""
        return _context(self.mesh, self.rules, self.attention)

    def init(self, *, seed: int | None = None, init_from: bool = True) -> TrainState:
        """The train state at step 0, as a fresh run starts: initialised from ``seed`` (default
        ``config.seed``) directly in its shardings, then the parameters that ``config.init_from`` names
        loaded from other runs (``init_from=False``: not loaded, random weights throughout)."""
        seed = self.config.seed if seed is None else seed
        init = _init_fn(self.task, self.tx)
        with self.context():
            state = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=self.shardings)(
                jax.random.key(seed)
            )
            if init_from:
                state = state.replace(params=load_init_from(self.config, state.params))
        return state

    def global_batch(self, local_batch: dict) -> dict:
        """The global batch assembled from this process's ``local_batch`` (numpy), placed on the mesh."""
        return sharding.global_batch(local_batch, self.mesh, self.rules)


def build_run(config, *, mesh: jax.sharding.Mesh | None = None, donate: bool = True) -> Run:
    """The ``Run`` of ``config``: its task, mesh, rules, optimizer, abstract train state and jitted step.

    Nothing is initialised (``Run.init`` does that) and nothing is compiled before the first step. On
    several processes, call ``distributed.initialize`` first: the mesh asks JAX for its devices.

    Args:
      config: a run's config (``configs/*.py``); its problems raise ``ConfigError`` here, as one line.
      mesh: the device mesh; default ``sharding.make_mesh(config.mesh)`` over all devices.
      donate: whether ``train_step`` donates its input state (its buffers are reused for the output).
    """
    policy = nan_policy(config)
    attention = attention_implementation(config)
    task = tasks.get_task(config)
    mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
    rules = sharding.logical_rules(config.sharding)
    with _context(mesh, rules, attention):  # the model is traced as it will be in every step
        params = jax.eval_shape(task.init, jax.random.key(0))  # shapes and logical names, no values
        tx = optimizer_lib.make(config.optimizer, config.total_steps, params)
        abstract, shardings = _abstract_state(params, tx, mesh, rules)
    trainable = optimizer_lib.trainable(config.optimizer, abstract.params)
    step_fn = make_train_step(task, tx, config.seed, trainable, policy)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    train_step = jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
        donate_argnums=0 if donate else (),
    )
    return Run(
        config=config,
        task=task,
        mesh=mesh,
        rules=rules,
        attention=attention,
        tx=tx,
        schedule=optimizer_lib.schedule(config.optimizer, config.total_steps),
        trainable=trainable,
        nan_policy=policy,
        abstract=abstract,
        shardings=shardings,
        batch_sharding=batch_sharding,
        step_fn=step_fn,
        train_step=train_step,
    )
