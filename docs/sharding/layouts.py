"""Draw how each sharding strategy lays out a weight and two activations on a 2 x 2 x 2 mesh.

    python docs/sharding/layouts.py          # writes docs/sharding/<strategy>.png for every strategy

For each strategy in ``mmjax.sharding.STRATEGIES`` the picture has three panels:

* the MLP weight ``fc1/kernel``, logical axes ``(embed, mlp)``, placed by ``sharding.param_spec``;
* the residual-stream activation, logical axes ``(batch, seq, embed)``, shown as its (batch, embed) plane;
* the MLP hidden activation, logical axes ``(batch, seq, mlp)``, shown as its (batch, mlp) plane;

activations are placed by ``flax.linen.logical_to_mesh_axes`` with the strategy's rules, as the models'
``nn.with_logical_constraint`` calls do. The blocks come from the real
``NamedSharding(mesh, spec).devices_indices_map(shape)``; each block is labelled with the ids of the
devices that hold a copy of it, so replication is visible.
"""

from __future__ import annotations

import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from mmjax import sharding  # noqa: E402

MESH = dict(data=2, fsdp=2, tensor=2)
BATCH, EMBED, MLP = 16, 64, 256


def blocks(spec: P, shape, mesh):
    """``[(rows slice, cols slice, [device ids])]`` of a 2-D array placed with ``spec``."""
    held: dict[tuple, list[int]] = {}
    for device, index in NamedSharding(mesh, spec).devices_indices_map(shape).items():
        key = tuple((s.indices(n)[0], s.indices(n)[1]) for s, n in zip(index, shape))
        held.setdefault(key, []).append(device.id)
    return sorted((k[0], k[1], sorted(v)) for k, v in held.items())


def describe(axes) -> str:
    if axes is None:
        return "whole"
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return "split over " + " x ".join(axes)


def fmt(spec) -> str:
    """A spec as ``(data*fsdp, -, tensor)``: mesh axes per dimension, ``-`` = whole (replicated)."""
    parts = ["-" if a is None else a if isinstance(a, str) else "*".join(a) for a in spec]
    return "(" + ", ".join(parts) + ")"


def draw(ax, title, spec: P, shape, names, mesh):
    bl = blocks(spec, shape, mesh)
    cmap = plt.get_cmap("tab10" if len(bl) <= 10 else "tab20")
    for i, ((r0, r1), (c0, c1), ids) in enumerate(bl):
        ax.add_patch(
            plt.Rectangle(
                (c0, r0),
                c1 - c0,
                r1 - r0,
                facecolor=cmap(i % cmap.N),
                edgecolor="black",
                alpha=0.75,
                linewidth=1.2,
            )
        )
        label = "0-7 (all)" if len(ids) == 8 else ",".join(map(str, ids))
        ax.text(
            (c0 + c1) / 2,
            (r0 + r1) / 2,
            label,
            ha="center",
            va="center",
            fontsize=9 if len(ids) < 4 else 8,
            rotation=90 if (c1 - c0) < 0.2 * shape[1] and len(label) > 3 else 0,
        )
    ax.set_xlim(0, shape[1])
    ax.set_ylim(shape[0], 0)
    ax.set_xlabel(f"{names[1]} ({shape[1]}): {describe(spec[1])}")
    ax.set_ylabel(f"{names[0]} ({shape[0]}): {describe(spec[0])}")
    copies = len(bl[0][2])
    ax.set_title(f"{title}\n{len(bl)} block(s), each held by {copies} device(s)", fontsize=10)


def figure(name: str, mesh, out_dir: str) -> str:
    rules = sharding.STRATEGIES[name]
    w_spec = sharding.param_spec(("embed", "mlp"), (EMBED, MLP), mesh, rules)
    act = nn.logical_to_mesh_axes(("batch", "seq", "embed"), rules)
    hidden = nn.logical_to_mesh_axes(("batch", "seq", "mlp"), rules)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw=dict(width_ratios=[1.3, 1, 1.3]))
    draw(
        axes[0],
        f"weight fc1/kernel (embed, mlp) -> {fmt(w_spec)}",
        w_spec,
        (EMBED, MLP),
        ("embed", "mlp"),
        mesh,
    )
    draw(
        axes[1],
        f"activation (batch, seq, embed) -> {fmt(act)}\nshown: (batch, embed) plane",
        P(act[0], act[2]),
        (BATCH, EMBED),
        ("batch", "embed"),
        mesh,
    )
    draw(
        axes[2],
        f"MLP hidden (batch, seq, mlp) -> {fmt(hidden)}\nshown: (batch, mlp) plane",
        P(hidden[0], hidden[2]),
        (BATCH, MLP),
        ("batch", "mlp"),
        mesh,
    )
    grid = f"device ids by mesh position [data][fsdp][tensor]: {mesh.device_ids.tolist()}"
    fig.suptitle(
        f"strategy {name!r} on mesh data=2 x fsdp=2 x tensor=2 (numbers in blocks: device ids holding "
        f"a copy)\n{grid}",
        fontsize=10,
    )
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> int:
    mesh = sharding.make_mesh(MESH)
    for name in sharding.STRATEGIES:
        print(figure(name, mesh, HERE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
