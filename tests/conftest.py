"""Test setup: 8 simulated CPU devices (before JAX initialises) and a shared data directory."""

import os

# Tests check values and equivalences, not speed, and their tiny programs spend most of their time in
# XLA's CPU compiler: without its expensive backend passes the suite runs about a third faster.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
    " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    " --xla_llvm_disable_expensive_passes=true"
)
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One tiny shapes dataset directory for the train-loop tests (built on first use)."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def trained(data_dir, tmp_path_factory):
    """``(workdir, results)`` of an uninterrupted 30-step run of the tiny config (``helpers.TRAINED``): the
    reference of the resume tests, also checked for its outputs."""
    from helpers import TRAINED, tiny_config

    from mmjax import train

    workdir = str(tmp_path_factory.mktemp("run"))
    return workdir, train.train_and_evaluate(tiny_config(data_dir, **TRAINED), workdir)
