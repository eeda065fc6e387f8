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


@pytest.mark.parametrize("changes,message", [
    ({"data.images_per_example": 2}, "data.images_per_example=2 is for task='vlm'; the contrastive task pairs one "
     "image with one text: set it to 1"),
    ({"data.image_size": 32}, "data.image_size 32 differs from model.image_size 64; make them equal"),
    ({"loss.kind": "sigmoid", "model.bias_init": None}, "config.loss.kind='sigmoid' needs a learned bias"),
])
def test_contrastive_task_config_errors_are_one_line(cfg, changes, message):
    from mmjax import tasks

    with cfg.unlocked():
        for key, value in changes.items():
            *parents, leaf = key.split(".")
            node = cfg
            for name in parents:
                node = node[name]
            node[leaf] = value
    with pytest.raises(ConfigError) as e:
        tasks.get_task(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
