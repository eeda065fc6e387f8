"""Config loading, overrides and their errors."""

import pytest

from mmjax import config as config_lib
from mmjax.config import ConfigError


@pytest.fixture
def cfg():
    return config_lib.load_file("configs/clip_shapes.py:tiny")


def test_overrides_convert_to_the_existing_type(cfg):
    config_lib.override(cfg, "total_steps", "7")
    config_lib.override(cfg, "optimizer.lr", "3e-4")
    config_lib.override(cfg, "data.data_dir", "/tmp/x")
    config_lib.override(cfg, "optimizer.freeze_regex", "('image/.*',)")
    config_lib.override(cfg, "dtype", "bfloat16")
    assert cfg.total_steps == 7 and cfg.optimizer.lr == 3e-4 and cfg.data.data_dir == "/tmp/x"
    assert cfg.optimizer.freeze_regex == ("image/.*",) and cfg.dtype == "bfloat16"


def test_unknown_key_is_one_clear_line(cfg):
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr': optimizer has keys .*lr") as e:
        config_lib.override(cfg, "optimizer.lrr", "1")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown config key 'totl_steps': the top level has keys"):
        config_lib.override(cfg, "totl_steps", "1")


def test_bad_value_type(cfg):
    with pytest.raises(ConfigError, match="config key 'total_steps' expects a int, got 'ten'"):
        config_lib.override(cfg, "total_steps", "ten")


def test_split_overrides():
    rest, overrides = config_lib.split_overrides(["--workdir=x", "--config.seed=3"])
    assert rest == ["--workdir=x"] and overrides == [("seed", "3")]
    with pytest.raises(ConfigError, match="has no value"):
        config_lib.split_overrides(["--config.seed"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file 'configs/nope.py' does not exist"):
        config_lib.load_file("configs/nope.py")
