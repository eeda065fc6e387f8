"""Test setup: 8 simulated CPU devices (before JAX initialises) and a shared data directory."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
