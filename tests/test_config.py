"""Config loading, overrides and their errors."""

import pytest

from mmjax import config as config_lib
from mmjax.config import ConfigError
from mmjax.data import shapes


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
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optimizer.lrr': optimizer has keys .*lr"
    ) as e:
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


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"data.images_per_example": 2},
            "data.images_per_example=2 is for task='vlm'; the contrastive task pairs one "
            "image with one text: set it to 1",
        ),
        ({"data.image_size": 32}, "data.image_size 32 differs from model.image_size 64; make them equal"),
        (
            {"loss.kind": "sigmoid", "model.bias_init": None},
            "config.loss.kind='sigmoid' needs a learned bias",
        ),
        (
            {"loss.negatives": "some"},
            "config.loss.negatives='some'; use 'all' (every other caption of the batch) or 'minimal_pairs'",
        ),
        (
            {"loss.negatives": "minimal_pairs", "loss.kind": "sigmoid", "model.bias_init": -10.0},
            "config.loss.negatives='minimal_pairs' is only implemented for loss.kind='softmax'",
        ),
        (
            {"loss.negatives": "minimal_pairs", "data.tokenizer": "bytes"},
            "config.loss.negatives='minimal_pairs': tokenizer 'bytes' splits an attribute word into several "
            "tokens",
        ),
    ],
)
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


def test_minimal_pairs_leave_pairs_differing_in_both_attributes_out_of_the_loss(cfg):
    import jax
    import numpy as np

    from mmjax import losses, tasks

    task_all = tasks.get_task(cfg)
    with cfg.unlocked():
        cfg.loss.negatives = "minimal_pairs"
    task = tasks.get_task(cfg)
    tok = task.tokenizer
    assert task.attribute_ids == tuple(
        tuple(tok.encode(w)[0] for w in group) for group in (shapes.COLOURS, shapes.SHAPES)
    )
    captions = ["a red star", "a red cross", "a blue circle", "a photo of a large blue star"]
    batch = {
        "image": np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
        "text": tok.tokenize(captions, cfg.data.max_len),
    }
    params = task.init(jax.random.key(0))
    loss, _ = task.loss(params, batch, None)
    out, _ = task.model.apply({"params": params}, batch["image"], batch["text"])
    want = np.asarray(losses.minimal_pair_mask(batch["text"], task.attribute_ids))
    assert not want[0, 2] and want[0, 1] and want[0, 3]  # red star: not with the blue circle
    np.testing.assert_allclose(
        loss,
        losses.softmax_contrastive_loss(out["image"], out["text"], out["logit_scale"], negative_mask=want)[0],
        rtol=1e-6,
    )
    assert float(loss) != float(task_all.loss(params, batch, None)[0])
    # a second text per image (data.extra_short_caption) adds its own loss under loss.short_negatives
    with cfg.unlocked():
        cfg.loss.negatives, cfg.loss.short_negatives = "all", "minimal_pairs"
    task = tasks.get_task(cfg)
    short = tok.tokenize(["a red star", "a blue star", "a red circle", "a red star"], cfg.data.max_len)
    both, metrics = task.loss(params, dict(batch, text_short=short), None)
    short_emb, _ = task.model.apply({"params": params}, short, method="encode_text")
    mask = np.asarray(losses.minimal_pair_mask(short, task.attribute_ids))
    expected = (
        task_all.loss(params, batch, None)[0]
        + losses.softmax_contrastive_loss(  # the object head's
            out["image_object"], short_emb, out["logit_scale"], negative_mask=mask
        )[0]
    ) / 2  # embedding
    np.testing.assert_allclose(both, expected, rtol=1e-6)
    assert "short_i2t_acc" in metrics


@pytest.mark.parametrize(
    "spec",
    [
        "clip_shapes.py:tiny",
        "siglip_shapes.py",
        "llava_shapes.py:stage=1,tiny",
        "flamingo_shapes.py:pairs",
        "lm_shapes.py",
    ],
)
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
    path.write_text(
        '"""A demo run on tiny data: more words that elaborate.\n\n'
        "    python -m mmjax.train --config=configs/demo.py --workdir=runs/d\n"
        "    python -m mmjax.train --config=configs/demo.py:tiny --workdir=/tmp/d\n"
        "    python -m mmjax.train --config=configs/demo.py:big,fast --workdir=/tmp/d\n"
        '    python -m mmjax.train --config=configs/demo.py:tiny --workdir=/tmp/e\n"""\n'
        'raise SystemExit("describe must not run the file")\n'
    )
    assert config_lib.describe(str(path)) == ("A demo run on tiny data", [":tiny", ":big,fast"])
    (tmp_path / "bare.py").write_text("def get_config(arg=None):\n    return {}\n")
    assert config_lib.describe(str(tmp_path / "bare.py")) == ("", [])
    purpose, arguments = config_lib.describe("configs/clip_shapes.py")
    assert purpose.startswith("A small CLIP") and purpose.endswith(".") and arguments == [":tiny"]


def test_a_config_rejecting_its_argument_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^configs/clip_shapes.py: unknown argument 'huge'; use no arg"):
        config_lib.load_file("configs/clip_shapes.py:huge")


# Every argument each config accepts (its docstring's commands, and the other orders and combinations).
ACCEPTED = {
    "clip_shapes.py": [None, "tiny"],
    "siglip_shapes.py": [None, "tiny"],
    "llava_shapes.py": [
        None,
        "stage=1",
        "stage=2",
        "tiny",
        "stage=1,tiny",
        "stage=2,tiny",
        "tiny,stage=2",
        "stage=2,pairs",
        "stage=2,pairs,tiny",
        "pairs,tiny,stage=2",
    ],
    "flamingo_shapes.py": [
        None,
        "tiny",
        "pairs",
        "pairs,tiny",
        "tiny,pairs",
        "trained_lm",
        "trained_lm,pairs,tiny",
    ],
    "lm_shapes.py": [None, "tiny"],
    # hf=ID reads the model when the config loads: here a Hub id not in the cache, a one-line error (below)
    "clip_custom.py": [None, "tiny", "hf=openai/clip-vit-base-patch32"],
    "lit_custom.py": ["tiny,run=/tmp/c", "run=/tmp/c", "hf=openai/clip-vit-base-patch32"],
}


def test_accepted_lists_every_config_and_every_argument_its_docstring_shows():
    import glob
    import os

    files = {os.path.basename(p) for p in glob.glob("configs/*.py")} - {"common.py"}
    assert set(ACCEPTED) == files
    for name, args in ACCEPTED.items():
        assert {a.lstrip(":") for a in config_lib.describe(f"configs/{name}")[1]} <= set(args), name


@pytest.mark.parametrize(
    "spec", [name + (f":{arg}" if arg else "") for name, args in ACCEPTED.items() for arg in args]
)
def test_every_accepted_argument_resolves(spec, monkeypatch, tmp_path):
    if "hf=" in spec:  # the docstring's Hub id, offline and not in an (empty) cache: one line naming it
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
        with pytest.raises(
            config_lib.ConfigError, match=r"^openai/clip-vit-base-patch32: cannot get this Hub"
        ):
            config_lib.load_file(f"configs/{spec}")
        return
    c = config_lib.load_file(f"configs/{spec}")
    assert c.task in ("contrastive", "vlm") and c.optimizer.name == "adamw" and c.mesh.data == -1
    assert (c.batch_size <= 32) == ("tiny" in spec)


def test_argument_order_does_not_matter():
    a = config_lib.load_file("configs/llava_shapes.py:stage=2,pairs,tiny")
    assert config_lib.load_file("configs/llava_shapes.py:tiny,pairs,stage=2").to_dict() == a.to_dict()
    assert (
        config_lib.load_file("configs/llava_shapes.py").to_dict()
        == config_lib.load_file("configs/llava_shapes.py:stage=1").to_dict()
    )  # stage 1 is the default


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "clip_shapes.py:huge",
            "configs/clip_shapes.py: unknown argument 'huge'; use no argument or ':tiny'",
        ),
        (
            "siglip_shapes.py:tiny,huge",
            "configs/siglip_shapes.py: unknown argument 'huge'; use no argument or ':tiny'",
        ),
        (
            "lm_shapes.py:stage=2",
            "configs/lm_shapes.py: unknown argument 'stage=2'; use no argument or ':tiny'",
        ),
        (
            "llava_shapes.py:stage=3",
            "configs/llava_shapes.py: unknown argument 'stage=3'; use no argument or a "
            "comma-separated list of 'stage=1|2', 'tiny', 'pairs'",
        ),
        (
            "llava_shapes.py:stage=2,tiny=0",
            "configs/llava_shapes.py: unknown argument 'tiny=0'; use no argument "
            "or a comma-separated list of 'stage=1|2', 'tiny', 'pairs'",
        ),
        (
            "llava_shapes.py:pairs",
            "configs/llava_shapes.py: argument 'pairs': 'pairs' needs 'stage=2', whose "
            "weights it starts from: use ':stage=2,pairs'",
        ),
        (
            "flamingo_shapes.py:stage=2",
            "configs/flamingo_shapes.py: unknown argument 'stage=2'; use no argument "
            "or a comma-separated list of 'tiny', 'pairs', 'trained_lm'",
        ),
    ],
)
def test_a_bad_argument_is_one_line_naming_the_allowed_ones(spec, message):
    with pytest.raises(ConfigError) as e:
        config_lib.load_file(f"configs/{spec}")
    assert str(e.value) == message


def test_parse_arg_flags_and_choices_in_any_order():
    common = config_lib.import_beside("configs/clip_shapes.py", "common.py")

    def parse(arg):
        return vars(common.parse_arg(arg, allowed=dict(stage=(1, 2), tiny=False), config_file="/a/x/demo.py"))

    assert parse(None) == parse("") == {"stage": 1, "tiny": False}
    assert parse("tiny,stage=2") == parse("stage=2,tiny") == {"stage": 2, "tiny": True}
    for bad in ("stage", "stage=", "stage=3", "tiny=1", "Tiny", "huge"):
        with pytest.raises(ConfigError) as e:
            parse(f"tiny,{bad}")
        assert str(e.value) == (
            f"x/demo.py: unknown argument '{bad}'; use no argument or a comma-separated "
            "list of 'stage=1|2', 'tiny'"
        )


def test_the_fusion_configs_share_data_schedule_optimizer_and_evaluation():
    """Without inheritance, llava, flamingo and lm still train on the same rows with the same optimizer
    and evaluation (configs/common.py's vlm_* pieces); only what the docstrings say differs."""
    for tiny in ("", ",tiny"):
        llava = config_lib.load_file(f"configs/llava_shapes.py:stage=2{tiny}").to_dict()
        flamingo = config_lib.load_file(f"configs/flamingo_shapes.py{tiny.replace(',', ':')}").to_dict()
        lm = config_lib.load_file(f"configs/lm_shapes.py{tiny.replace(',', ':')}").to_dict()
        for other in (flamingo, lm):
            for key in ("task", "batch_size", "log_every", "checkpoint_every", "eval", "mesh", "sharding"):
                assert other[key] == llava[key], key
            # the same optimizer; what it freezes differs
            assert {**other["optimizer"], "freeze_regex": ()} == {**llava["optimizer"], "freeze_regex": ()}
        # steps differ: each design's own 10-minute budget; early fusion asks balanced questions
        # (docs/vqa_learning.md, section 8), deep fusion and the blind LM the stored ones
        assert llava["data"]["vqa_questions"] == "balanced" and flamingo["data"]["vqa_questions"] == "stored"
        assert flamingo["data"] == {**llava["data"], "vqa_questions": "stored"}
        assert {**lm["data"], "caption_prob": 0} == {
            **llava["data"],
            "caption_prob": 0,
            "vqa_questions": "stored",
        }
        assert flamingo["model"]["image"] == llava["model"]["image"]
        assert flamingo["model"]["lm"] == llava["model"]["lm"] == lm["model"]["lm"]
