"""Meshes from config, sharding strategies as logical-axis rules, and placement helpers.

Models only name *logical* axes (``batch``, ``seq``, ``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``,
``proj``). A strategy is a list of ``(logical name, mesh axes)`` rules; a name without a rule is
replicated. The mesh always has the three axes ``data``, ``fsdp`` and ``tensor`` (sizes from
``config.mesh``; ``-1`` takes the remaining devices), so every strategy runs on every mesh.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Data parallelism: the batch is split over every device, parameters are replicated.
STRATEGIES: dict[str, tuple[tuple[str, object], ...]] = {
    "dp": (("batch", ("data", "fsdp")),),
}


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
    sizes = [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"config.mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} "
                              "devices; make the fixed axis sizes divide the device count")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"config.mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but "
                          f"{num_devices} are available; set one axis to -1 or match the device count")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(mesh_cfg, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_rules(sharding_cfg) -> tuple[tuple[str, object], ...]:
    rules = sharding_cfg.get("rules")
    if rules:
        return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
    name = sharding_cfg.get("strategy", "dp")
    if name not in STRATEGIES:
        raise ConfigError(f"unknown sharding strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def tree_shardings(abstract_tree, mesh, rules):
    """NamedShardings for a pytree whose leaves may be ``nn.LogicallyPartitioned`` boxes."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh, rules) -> NamedSharding:
    """Sharding of a batch array: the leading axis split like the logical ``batch`` axis."""
    return NamedSharding(mesh, P(nn.logical_to_mesh_axes(("batch",), rules)[0]))


def data_parallel_size(mesh, rules) -> int:
    axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def global_batch(local_batch: dict, mesh, rules) -> dict:
    """Assemble the global batch from each process's local batch (works for one process too)."""
    sharding = batch_sharding(mesh, rules)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
