"""Meshes from config, sharding strategies as logical-axis rules, and placement helpers.

Models only name *logical* axes (``batch``, ``seq``, ``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``,
``proj``). A strategy is a list of ``(logical name, mesh axes)`` rules; a name without a rule is
replicated. The mesh always has the three axes ``data``, ``fsdp`` and ``tensor`` (sizes from
``config.mesh``; ``-1`` takes the remaining devices), so every strategy runs on every mesh.

How a rule list becomes a placement (MaxText's convention, as in ``flax.linen.logical_to_mesh_axes``):
each dimension of an array takes the *first* rule for its logical name whose mesh axes no earlier
dimension of that array uses. For parameters we add one condition: the mesh axes must divide the
dimension (otherwise the next rule is tried, and at the end the dimension is replicated), so a
strategy never fails on an odd size such as a 2-head model on ``tensor=4``. One rule list therefore
places both weights (``embed -> fsdp``) and activations (``batch`` already took ``fsdp``, so the
activation's ``embed`` stays whole).

Strategies (docs/sharding/ has a page and a picture for each):

``dp``       parameters and optimizer state replicated; the batch is split over all devices.
``fsdp``     ZeRO-3: every parameter (and its Adam moments) split over ``fsdp`` along one dimension,
             gathered just before use; the batch split over all devices (``data`` x ``fsdp`` x
             ``tensor``), so ``data`` > 1 gives hybrid sharding (replicas of a sharded model).
``tp``       Megatron: attention heads, MLP hidden units and the vocabulary split over ``tensor``; the
             batch split over ``data`` x ``fsdp``.
``fsdp_tp``  both: ``tp``'s splits over ``tensor`` and ``fsdp``'s over ``fsdp``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, object], ...]

# FSDP splits each weight along its first dimension (in the array's order) that has one of these names
# and that ``fsdp`` divides.
_FSDP: Rules = (
    ("embed", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
    ("kv", "fsdp"),
    ("vocab", "fsdp"),
    ("proj", "fsdp"),
)
_TP: Rules = (("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))

STRATEGIES: dict[str, Rules] = {
    "dp": (("batch", MESH_AXES),),
    "fsdp": (("batch", MESH_AXES),) + _FSDP,
    "tp": (("batch", ("data", "fsdp")),) + _TP,
    "fsdp_tp": (("batch", ("data", "fsdp")),) + _TP + _FSDP,
}


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
    sizes = [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} "
                "devices; make the fixed axis sizes divide the device count"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but "
            f"{num_devices} are available; set one axis to -1 or match the device count"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(mesh_cfg, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_rules(sharding_cfg) -> Rules:
    """The rule list of ``config.sharding``: its own ``rules`` if given, else the named ``strategy``."""
    rules = sharding_cfg.get("rules")
    if rules:
        out = []
        for rule in rules:
            if len(rule) != 2 or not isinstance(rule[0], str):
                raise ConfigError(
                    f"config.sharding.rules: {rule!r} is not a (logical name, mesh axes) pair; "
                    "write e.g. [('batch', ('data', 'fsdp')), ('embed', 'fsdp')]"
                )
            axes = rule[1]
            axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
            for axis in axes if isinstance(axes, tuple) else (axes,):
                if axis is not None and axis not in MESH_AXES:
                    raise ConfigError(
                        f"config.sharding.rules: {rule!r} names mesh axis {axis!r}; the mesh "
                        f"axes are {', '.join(MESH_AXES)}"
                    )
            out.append((rule[0], axes))
        return tuple(out)
    name = sharding_cfg.get("strategy", "dp")
    if name not in STRATEGIES:
        raise ConfigError(f"unknown sharding strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def _axes_tuple(axes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def param_spec(names, shape, mesh, rules) -> P:
    """Mesh placement of one parameter: each dimension takes the first rule for its logical name whose
    mesh axes are still unused in this array *and* divide the dimension; otherwise it is replicated."""
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        chosen = None
        for rule_name, axes in rules:
            axes = _axes_tuple(axes)
            if rule_name != name or not axes or used & set(axes):
                continue
            if size % math.prod(mesh.shape[a] for a in axes) == 0:
                chosen = axes
                break
        used |= set(chosen or ())
        spec.append(None if chosen is None else chosen[0] if len(chosen) == 1 else chosen)
    return P(*spec)


def tree_shardings(abstract_tree, mesh, rules):
    """NamedShardings for a pytree whose leaves may be ``nn.LogicallyPartitioned`` boxes (unboxed
    leaves, e.g. the step counter, are replicated)."""

    def leaf(x):
        if isinstance(x, nn.LogicallyPartitioned):
            return NamedSharding(mesh, param_spec(x.names, x.value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(leaf, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh, rules) -> NamedSharding:
    """Sharding of a batch array: the leading axis split like the logical ``batch`` axis."""
    return NamedSharding(mesh, P(batch_axes(rules) or None))


def batch_axes(rules=None) -> tuple[str, ...]:
    """The mesh axes the batch is split over (``rules`` default to the active ``nn.logical_axis_rules``)."""
    return _axes_tuple(nn.logical_to_mesh_axes(("batch",), rules)[0])


def active_batch_axes() -> tuple[str, ...]:
    """Mesh axes of the batch under the active mesh (``jax.set_mesh``) and logical rules; ``()`` when
    no mesh is active (plain single-device code)."""
    if jax.sharding.get_abstract_mesh().empty:
        return ()
    return batch_axes()


def data_parallel_size(mesh, rules) -> int:
    return math.prod(mesh.shape[a] for a in batch_axes(rules))


def global_batch(local_batch: dict, mesh, rules) -> dict:
    """Assemble the global batch from each process's local batch (works for one process too)."""
    sharding = batch_sharding(mesh, rules)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }
