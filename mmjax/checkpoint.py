"""Orbax checkpoints of a training run: train state + Grain iterator state + config.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,config}``. ``state`` is the sharded train state
(restored onto whatever mesh the caller's target describes), ``data`` the Grain iterator state (so a
resumed run sees exactly the batches an uninterrupted run would), ``config`` the run's config as JSON.
Saving is asynchronous; ``max_to_keep`` old checkpoints are kept.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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
