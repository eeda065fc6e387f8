"""Orbax checkpoints of a training run: train state + Grain iterator state + config.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,config,info}``. ``state`` is the sharded train state
(restored onto whatever mesh the caller's target describes), ``data`` the Grain iterator state (so a
resumed run sees exactly the batches an uninterrupted run would), ``config`` the run's config as JSON,
``info`` the loop's counters (e.g. skipped steps) as JSON. Saving is asynchronous; ``max_to_keep`` old
checkpoints are kept, and Orbax deletes an old one only after a newer one is committed (docs/reliability.md).
``restore_latest`` resumes from the newest *readable* checkpoint, moving unreadable ones aside.

``load_params`` starts a new run from another run's weights (``config.init_from``): the parameters whose
path matches a regex are read from that run's latest checkpoint, nothing else (no optimizer state).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from mmjax.config import ConfigError


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        step: int,
        state,
        data_iterator=None,
        config: dict | None = None,
        *,
        info: dict | None = None,
        force=False,
    ) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            import grain  # the data stack is only needed when there is an iterator to save

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        if info is not None:
            items["info"] = ocp.args.JsonSave(info)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, target_state, data_iterator=None):
        """Restore ``step``. ``target_state`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` with
        shardings (the restored arrays get those shardings); ``data_iterator`` is set in place."""
        import grain

        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            target_state,
        )
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_info(self, step: int) -> dict:
        """The ``info`` saved with ``step``; ``{}`` for a checkpoint saved without one."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "info")):
            return {}
        return self.manager.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore()))["info"]

    def restore_latest(self, target_state, data_iterator=None) -> tuple[int | None, Any, dict]:
        """Restore the newest readable checkpoint: ``(step, state, info)``, or ``(None, target_state, {})``
        when there is none.

        A checkpoint that cannot be read (a file missing or damaged; tried twice, a second apart, so that a
        read failing for a moment does not count) is moved aside to
        ``<step>.corrupt-<time>`` (kept for inspection; Orbax no longer sees it as a step) with one warning
        line on stderr, and the next older one is tried. A checkpoint whose train state has other shapes
        than ``target_state`` was written by another model or optimizer config: ``ConfigError``, and
        nothing is moved. ``data_iterator`` is set in place (left as it was when nothing is restored)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        initial = data_iterator.get_state() if steps and data_iterator is not None else None
        unreadable, found = [], (None, target_state, {})
        for step in steps:
            # a second try first: a read can fail for a moment (a network filesystem)
            for attempt in range(2):
                try:
                    found = (step, self.restore(step, target_state, data_iterator), self.restore_info(step))
                    break
                except Exception as e:  # TensorStore raises bare Exception; see _check_shapes
                    self._check_shapes(step, target_state)
                    error = e
                    if attempt == 0:
                        time.sleep(1.0)
            if found[0] is not None:
                break
            unreadable.append((step, error))
        if jax.process_count() > 1:  # every process must resume from the same step (and see the moves below)
            from jax.experimental import multihost_utils

            steps = set(
                multihost_utils.process_allgather(np.int32(-1 if found[0] is None else found[0])).tolist()
            )
            if len(steps) > 1:
                raise RuntimeError(
                    f"processes found different readable checkpoints {sorted(steps)} in "
                    f"{self.directory}; all processes must see the same files"
                )
        then = (
            f"resuming from {self.directory}/{found[0]}"
            if found[0] is not None
            else ("no readable checkpoint remains; starting from scratch")
        )
        for step, error in unreadable:
            moved = self._move_aside(step)
            if jax.process_index() == 0:
                print(
                    f"warning: checkpoint {self.directory}/{step} is unreadable ({_one_line(error)}); {then} "
                    f"(moved it to {moved})",
                    file=sys.stderr,
                )
        if unreadable:
            if found[0] is None and data_iterator is not None:  # a failed attempt may have set it
                data_iterator.set_state(initial)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("mmjax_checkpoint_moved_aside")
            self.manager.reload()
        return found

    def _check_shapes(self, step: int, target_state) -> None:
        """Raise ``ConfigError`` if ``step``'s train state is readable but shaped unlike ``target_state``,
        naming the first array that differs and both shapes."""
        from etils import epath

        try:
            stored = (
                ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.directory, str(step), "state")).tree
            )
            stored = _shapes_by_path(stored)
        except Exception:  # unreadable metadata: the checkpoint is damaged, not foreign
            return
        wanted = _shapes_by_path(target_state)
        if stored == wanted:
            return
        keys = sorted(
            stored.keys() | wanted.keys(), key=lambda k: (not k.startswith("params/"), k)
        )  # params first
        key = next(k for k in keys if stored.get(k) != wanted.get(k))
        there, here = (f"{d[key]}" if key in d else "absent" for d in (stored, wanted))
        raise ConfigError(
            f"checkpoint {self.directory}/{step} holds a train state of other shapes than this "
            f"config's model and optimizer ({key}: {there} there, {here} here); resume with the "
            "config it was written with, or choose another --workdir"
        )

    def _move_aside(self, step: int) -> str:
        """Rename ``step``'s directory to ``<step>.corrupt-<time>`` (process 0 only); return the new path."""
        moved = os.path.join(self.directory, f"{step}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        if jax.process_index() == 0:
            base, n = moved, 1
            while os.path.exists(moved):
                moved, n = f"{base}-{n}", n + 1
            os.rename(os.path.join(self.directory, str(step)), moved)
        return moved

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _one_line(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or "no message"
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def saved_config(
    workdir: str, step: int | None = None, *, fix: str = "train it first (python -m mmjax.train)"
):
    """``(config, step)``: the config saved with checkpoint ``step`` (default: the latest) of run
    ``workdir`` (or its ``checkpoints`` directory) -- the run's config as it trained, command-line overrides
    included (JSON's lists as tuples again). Raises ``ConfigError`` (one line) when the run has no such
    checkpoint (the line ends with ``fix``) or its config does not read."""
    import ml_collections

    directory, step = _checkpoint_step(workdir, step)
    if step is None or not os.path.isdir(os.path.join(directory, str(step), "config")):
        where = f"checkpoint {step}" if step is not None else "no checkpoint"
        raise ConfigError(f"{workdir}: {where} with a saved config; {fix}")
    try:
        restored = ocp.CheckpointManager(directory).restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
    except Exception as e:  # a damaged checkpoint: one line
        message = f"checkpoint {directory}/{step}: its config does not read ({_one_line(e)})"
        raise ConfigError(message) from None
    return ml_collections.ConfigDict(_tuples(restored["config"])), step


def _checkpoint_step(source: str, step: int | None) -> tuple[str, int | None]:
    """``(checkpoints directory, step)`` of ``source`` (an mmjax workdir, or its ``checkpoints``
    directory); ``step`` None: the latest there (None when there is none)."""
    directory = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(os.path.join(directory, "checkpoints")):
        directory = os.path.join(directory, "checkpoints")
    if step is None and os.path.isdir(directory):
        step = ocp.CheckpointManager(directory).latest_step()
    return directory, step


def _tuples(tree):
    """JSON's lists back to the tuples configs are written with (module fields must be hashable)."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return tuple(_tuples(v) for v in tree)
    return tree


def load_params(source: str, params, patterns, step: int | None = None) -> dict:
    """``params`` with every parameter whose path (``"image/encoder/block_0/attn/query/kernel"``) fully
    matches one of ``patterns`` replaced by its value in checkpoint ``step`` (default: the latest) of
    ``source`` (an mmjax workdir, or its ``checkpoints`` directory). ``params`` may hold arrays or placed
    ``jax.ShapeDtypeStruct`` s; loaded arrays take their shardings. Raises ``ConfigError`` naming the
    key when a selected parameter is missing from the checkpoint or has another shape."""
    directory, step = _checkpoint_step(source, step)
    if step is None or not os.path.isdir(os.path.join(directory, str(step))):
        raise ConfigError(
            f"init_from: no checkpoint in {source!r}; train that run first or fix init_from.workdir"
        )
    path = os.path.join(directory, str(step), "state")
    from etils import epath

    stored = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path)).tree["params"]
    stored = flax.traverse_util.flatten_dict(stored, sep="/")
    target = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    chosen = _chosen(target, stored, patterns, f"checkpoint {path}", "init_from.regex")
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # for targets without a sharding
    item = {
        "params": flax.traverse_util.unflatten_dict(
            {
                k: jax.ShapeDtypeStruct(
                    target[k].shape, target[k].dtype, sharding=getattr(target[k], "sharding", None) or default
                )
                for k in chosen
            },
            sep="/",
        )
    }
    args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), item)
    loaded = ocp.PyTreeCheckpointer().restore(
        path, args=ocp.args.PyTreeRestore(item, restore_args=args, partial_restore=True)
    )
    merged = dict(target, **flax.traverse_util.flatten_dict(loaded["params"], sep="/"))
    return flax.traverse_util.unflatten_dict(merged, sep="/")


def _chosen(target: dict, stored: dict, patterns, where: str, option: str) -> list[str]:
    """The keys of ``target`` (flat parameter paths) that fully match one of ``patterns``; a ``ConfigError``
    naming the key when ``stored`` (``where``) lacks one or holds it in another shape."""
    regexes = [re.compile(p) for p in patterns]
    chosen = [k for k in target if any(r.fullmatch(k) for r in regexes)]
    if not chosen:
        raise ConfigError(
            f"{option} {tuple(patterns)} matches no parameter of the model; paths look like "
            f"{next(iter(target))!r}"
        )
    for key in chosen:
        if key not in stored:
            raise ConfigError(f"init_from: parameter {key!r} is not in {where}; narrow {option}")
        if tuple(stored[key].shape) != tuple(target[key].shape):
            raise ConfigError(
                f"init_from: parameter {key!r} has shape {tuple(stored[key].shape)} in {where} but "
                f"{tuple(target[key].shape)} in the model; make the model sizes match"
            )
    return chosen


def load_hf_params(directory: str, params, patterns=(".*",)) -> dict:
    """``params`` with every parameter whose path fully matches one of ``patterns`` replaced by its value
    in the Hugging Face model ``directory`` (``config.json`` + safetensors, converted by
    ``mmjax.interop.hf.load``), placed with the target's sharding: fine-tuning an imported model."""
    from mmjax.interop import hf  # lazy: the optional [hf] extra, only for a run that loads HF weights

    _, loaded = hf.load(directory)
    stored = flax.traverse_util.flatten_dict(loaded, sep="/")
    target = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    chosen = _chosen(target, stored, patterns, f"Hugging Face model {directory}", "init_from.hf_regex")
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for key in chosen:
        sharding = getattr(target[key], "sharding", None) or default
        target[key] = jax.device_put(np.asarray(stored[key], target[key].dtype), sharding)
    return flax.traverse_util.unflatten_dict(target, sep="/")


def _shapes_by_path(tree) -> dict[str, tuple]:
    """``{"params/image/...": shape}`` for the arrays of ``tree`` (a train state or Orbax's metadata of one:
    attribute, dict and sequence keys all become path parts)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(x.shape)
        for path, x in leaves
        if hasattr(x, "shape")
    }
