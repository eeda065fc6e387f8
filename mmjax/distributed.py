"""Multi-host start-up: one Python process per host (or per GPU), joined by ``jax.distributed``.

``initialize(config.distributed)`` must run before anything asks JAX for its devices. It

- joins the processes given by ``coordinator_address`` (``host:port`` of process 0), ``num_processes``
  and ``process_id``, taken from the config or, where the config leaves them ``None``, from the
  environment variables ``MMJAX_COORDINATOR_ADDRESS``, ``MMJAX_NUM_PROCESSES``, ``MMJAX_PROCESS_ID``;
- on Cloud TPU, with nothing given, lets JAX find the coordinator and the processes itself;
- otherwise does nothing: the run is a single process.

Afterwards ``jax.devices()`` lists the devices of every process, ``jax.process_index()`` is this
process's id and ``jax.process_count()`` the number of processes. Calling it again is a no-op.
"""

from __future__ import annotations

import os

import jax

from mmjax.config import ConfigError

ENV = {
    "coordinator_address": "MMJAX_COORDINATOR_ADDRESS",
    "num_processes": "MMJAX_NUM_PROCESSES",
    "process_id": "MMJAX_PROCESS_ID",
}
# Environment variables that mark a Cloud TPU (GKE sets them); on a TPU VM ``import jax`` finds the chips.
_TPU_ENV = (
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "CLOUD_TPU_TASK_ID",
    "TPU_ACCELERATOR_TYPE",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def settings(dist_cfg=None) -> dict:
    """``coordinator_address``, ``num_processes``, ``process_id``: the config's, else the environment's."""
    dist_cfg = dist_cfg or {}
    out = {}
    for key, env in ENV.items():
        value = dist_cfg.get(key, None)
        source = f"config.distributed.{key}"
        if value is None and os.environ.get(env, "") != "":
            value, source = os.environ[env], env
        if value is not None and key != "coordinator_address":
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{source} must be an integer, got {value!r}") from None
        out[key] = value
    return out


def on_cloud_tpu() -> bool:
    """Cheap test for a Cloud TPU VM (does not start a JAX backend)."""
    if any(os.environ.get(name) for name in _TPU_ENV):
        return True
    try:  # set by ``import jax`` when libtpu and TPU chips are present (JAX's own test; private)
        from jax._src import cloud_tpu_init

        return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
    except (ImportError, AttributeError):
        return False


def initialize(dist_cfg=None) -> bool:
    """Join the other processes if the config, the environment or Cloud TPU says there are any;
    returns whether ``jax.distributed`` is initialised."""
    if jax.distributed.is_initialized():
        return True
    s = settings(dist_cfg)
    address, count, index = s["coordinator_address"], s["num_processes"], s["process_id"]
    if address is None and count is None and index is None:
        if not on_cloud_tpu():
            return False
        try:
            jax.distributed.initialize()  # JAX reads the TPU metadata / environment
        except ValueError as e:  # no multi-host cluster found (e.g. a lone TPU VM): one process
            if "coordinator_address" not in str(e):
                raise
            return False
        return True
    if address is None:
        raise ConfigError(
            "num_processes/process_id are set but no coordinator address; set config.distributed."
            "coordinator_address (or $MMJAX_COORDINATOR_ADDRESS) to HOST:PORT of process 0"
        )
    if ":" not in address:
        raise ConfigError(f"coordinator address {address!r} has no port; write HOST:PORT, e.g. 10.0.0.1:1234")
    if count is None or index is None:
        raise ConfigError(
            "a coordinator address needs num_processes and process_id too; set config.distributed."
            "num_processes and .process_id (or $MMJAX_NUM_PROCESSES and $MMJAX_PROCESS_ID)"
        )
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"process_id {index} is outside [0, num_processes={count}); number the processes "
            "0 .. num_processes - 1"
        )
    # JAX raises if a backend is already running (jax.devices(), an array, a jit): call this first.
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)
    return True
