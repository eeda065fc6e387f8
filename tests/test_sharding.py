"""Mesh construction and data-parallel placement on 8 simulated devices."""

import jax
import ml_collections
import numpy as np
import pytest

from mmjax import sharding
from mmjax.config import ConfigError


def mesh_cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, tensor=1), **kw))


def test_mesh_fills_the_minus_one_axis():
    assert jax.device_count() == 8
    assert sharding.mesh_shape(mesh_cfg(), 8) == (8, 1, 1)
    assert sharding.mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    mesh = sharding.make_mesh(mesh_cfg(data=2, fsdp=4))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(data=3, fsdp=-1), "does not divide the 8 devices"),
        (dict(data=2, fsdp=2, tensor=1), "has 4 devices but 8 are available"),
        (dict(data=-1, fsdp=-1), "at most one axis may be -1"),
    ],
)
def test_mesh_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        sharding.mesh_shape(mesh_cfg(**kw), 8)


def test_global_batch_is_split_over_data_parallel_devices():
    mesh = sharding.make_mesh(mesh_cfg())
    rules = sharding.logical_rules(ml_collections.ConfigDict(dict(strategy="dp")))
    assert sharding.data_parallel_size(mesh, rules) == 8
    batch = sharding.global_batch({"x": np.arange(16.0).reshape(16, 1)}, mesh, rules)
    assert batch["x"].shape == (16, 1)
    assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 1)}
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(16.0).reshape(16, 1))


def test_unknown_strategy():
    with pytest.raises(ConfigError, match="unknown sharding strategy 'zero'; known: dp"):
        sharding.logical_rules(ml_collections.ConfigDict(dict(strategy="zero")))
