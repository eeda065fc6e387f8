"""Test setup: 8 simulated CPU devices (before JAX initialises), a compilation cache and a shared data
directory."""

import os
import shutil
import tempfile

# Tests check values and equivalences, not speed, and their tiny programs spend most of their time in
# XLA's CPU compiler: without its expensive backend passes the suite runs about a third faster.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
    " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    " --xla_llvm_disable_expensive_passes=true"
)
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
# Many tests and their subprocesses (the command lines, the two-process run, the notebooks) compile the same
# tiny programs: JAX's persistent compilation cache, one fresh directory per test session (inherited by the
# pytest-xdist workers and every subprocess through the environment), compiles each once. It changes what
# is compiled, never what a program computes.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax-tests-xla-cache-")
    os.environ["MMJAX_TESTS_CACHE_OWNER"] = str(os.getpid())  # removes it at the end (pytest_unconfigure)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


def pytest_unconfigure(config):
    """The process that made the compilation cache (not an xdist worker) removes it at the end."""
    if os.environ.get("MMJAX_TESTS_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


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
