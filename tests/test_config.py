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


@pytest.mark.parametrize("spec", ["clip_shapes.py:tiny", "siglip_shapes.py", "llava_shapes.py:stage=1,tiny",
                                  "flamingo_shapes.py:pairs", "lm_shapes.py"])
def test_as_overrides_lines_read_back_as_the_same_values(spec):
    """Each of ``--print_config``'s lines, given back as ``--config.KEY=VALUE``, sets its key to the value
    it shows (tuples, None, floats and booleans included)."""
    want = config_lib.load_file(f"configs/{spec}")
    lines = config_lib.as_overrides(want)
    assert lines == sorted(lines) and len(lines) > 40
    got = config_lib.load_file(f"configs/{spec}")
    for line in lines:
        key, _, value = line.partition("=")
        with got.unlocked():  # set the key to a placeholder of its type, then read the line back into it
            node = got
            for part in key.split(".")[:-1]:
                node = node[part]
            leaf = key.split(".")[-1]
            node[leaf] = type(node[leaf])() if node[leaf] is not None else None
        config_lib.override(got, key, value)
    assert got.to_dict() == want.to_dict()


def test_as_overrides_lines_turn_one_config_into_another():
    tiny = config_lib.load_file("configs/clip_shapes.py:tiny")
    full = config_lib.load_file("configs/clip_shapes.py")
    assert full.to_dict() != tiny.to_dict()
    for line in config_lib.as_overrides(tiny):
        config_lib.override(full, *line.split("=", 1))
    assert full.to_dict() == tiny.to_dict()


def test_describe_reads_purpose_and_arguments_from_the_docstring(tmp_path):
    path = tmp_path / "demo.py"
    path.write_text('"""A demo run on tiny data: more words that elaborate.\n\n'
                    '    python -m mmjax.train --config=configs/demo.py --workdir=runs/d\n'
                    '    python -m mmjax.train --config=configs/demo.py:tiny --workdir=/tmp/d\n'
                    '    python -m mmjax.train --config=configs/demo.py:big,fast --workdir=/tmp/d\n'
                    '    python -m mmjax.train --config=configs/demo.py:tiny --workdir=/tmp/e\n"""\n'
                    'raise SystemExit("describe must not run the file")\n')
    assert config_lib.describe(str(path)) == ("A demo run on tiny data", [":tiny", ":big,fast"])
    (tmp_path / "bare.py").write_text("def get_config(arg=None):\n    return {}\n")
    assert config_lib.describe(str(tmp_path / "bare.py")) == ("", [])
    purpose, arguments = config_lib.describe("configs/clip_shapes.py")
    assert purpose.startswith("A small CLIP") and purpose.endswith(".") and arguments == [":tiny"]


def test_a_config_rejecting_its_argument_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^configs/clip_shapes.py: unknown argument 'huge'; use no arg"):
        config_lib.load_file("configs/clip_shapes.py:huge")
