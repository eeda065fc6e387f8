"""Orbax checkpoints of a training run: train state + Grain iterator state + config.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,config}``. ``state`` is the sharded train state
(restored onto whatever mesh the caller's target describes), ``data`` the Grain iterator state (so a
resumed run sees exactly the batches an uninterrupted run would), ``config`` the run's config as JSON.
Saving is asynchronous; ``max_to_keep`` old checkpoints are kept.

``load_params`` starts a new run from another run's weights (``config.init_from``): the parameters whose
path matches a regex are read from that run's latest checkpoint, nothing else (no optimizer state).
"""

from __future__ import annotations

import os
import re

import flax
import jax
import orbax.checkpoint as ocp

from mmjax.config import ConfigError


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, config: dict | None = None, *, force=False) -> bool:
        import grain  # the data stack is only needed when there is an iterator to save

        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, target_state, data_iterator=None):
        """Restore ``step``. ``target_state`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` with
        shardings (the restored arrays get those shardings); ``data_iterator`` is set in place."""
        import grain

        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target_state)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def init_sources(init_from) -> list[tuple[str, tuple[str, ...]]]:
    """``[(workdir, regexes), ...]`` from a config's ``init_from``: ``workdir`` + ``regex`` (None: none),
    then each ``(workdir, regexes)`` pair of ``also`` (e.g. the vision tower from one run, the LM from
    another). Later sources overwrite earlier ones where their regexes overlap."""
    if not init_from:
        return []
    sources = [(init_from["workdir"], tuple(init_from["regex"]))] if init_from.get("workdir") else []
    for pair in init_from.get("also", ()) or ():
        if len(pair) != 2 or isinstance(pair[1], str):
            raise ConfigError(f"init_from.also: {pair!r} is not a (workdir, (regex, ...)) pair")
        sources.append((pair[0], tuple(pair[1])))
    return sources


def load_params(source: str, params, patterns, step: int | None = None) -> dict:
    """``params`` with every parameter whose path (``"image/encoder/block_0/attn/query/kernel"``) fully
    matches one of ``patterns`` replaced by its value in checkpoint ``step`` (default: the latest) of
    ``source`` (an mmjax workdir, or its ``checkpoints`` directory). ``params`` may hold arrays or placed
    ``jax.ShapeDtypeStruct`` s; loaded arrays take their shardings. Raises ``ConfigError`` naming the
    key when a selected parameter is missing from the checkpoint or has another shape."""
    directory = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(os.path.join(directory, "checkpoints")):
        directory = os.path.join(directory, "checkpoints")
    if step is None:
        step = ocp.CheckpointManager(directory).latest_step() if os.path.isdir(directory) else None
    if step is None or not os.path.isdir(os.path.join(directory, str(step))):
        raise ConfigError(f"init_from: no checkpoint in {source!r}; train that run first or fix init_from.workdir")
    path = os.path.join(directory, str(step), "state")
    from etils import epath

    stored = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path)).tree["params"]
    stored = flax.traverse_util.flatten_dict(stored, sep="/")
    target = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    regexes = [re.compile(p) for p in patterns]
    chosen = [k for k in target if any(r.fullmatch(k) for r in regexes)]
    if not chosen:
        raise ConfigError(f"init_from.regex {tuple(patterns)} matches no parameter of the model; paths look like "
                          f"{next(iter(target))!r}")
    for key in chosen:
        if key not in stored:
            raise ConfigError(f"init_from: parameter {key!r} is not in checkpoint {path}; narrow init_from.regex")
        if tuple(stored[key].shape) != tuple(target[key].shape):
            raise ConfigError(f"init_from: parameter {key!r} has shape {tuple(stored[key].shape)} in {path} but "
                              f"{tuple(target[key].shape)} in the model; make the model sizes match")
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # for targets without a sharding
    item = {"params": flax.traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(target[k].shape, target[k].dtype, sharding=getattr(target[k], "sharding", None)
                                 or default) for k in chosen}, sep="/")}
    args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), item)
    loaded = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(item, restore_args=args,
                                                                               partial_restore=True))
    merged = dict(target, **flax.traverse_util.flatten_dict(loaded["params"], sep="/"))
    return flax.traverse_util.unflatten_dict(merged, sep="/")
