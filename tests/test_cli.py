"""The command line a newcomer meets: ``python -m mmjax.train --help`` lists the configs, ``--print_config``
shows a config without building anything, bad flags are one line; generating the shapes dataset prints
mmjax's two lines and none of TFDS's download messages."""

import ast
import glob
import os
import subprocess
import sys

import pytest

from mmjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(ROOT, "configs", "clip_shapes.py")


def run(*args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def first_words(path, n=4):
    with open(path) as f:
        return " ".join(ast.get_docstring(ast.parse(f.read())).split()[:n])


def test_help_lists_the_configs_with_their_purpose_and_arguments():
    proc = run("-m", "mmjax.train", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("usage: python -m mmjax.train --config=configs/FILE.py[:ARG] --workdir=DIR")
    assert "python -m mmjax.train --config=configs/FILE.py[:ARG] --print_config" in out
    lines = out.splitlines()
    (clip,) = [i for i, line in enumerate(lines) if line.strip().startswith("configs/clip_shapes.py")]
    assert first_words(CLIP) in lines[clip]  # "A small CLIP trained", from its docstring
    assert "arguments: :tiny" in " ".join(lines[clip : clip + 4])
    for path in glob.glob(os.path.join(ROOT, "configs", "*.py")):
        if os.path.basename(path) != "common.py":
            assert f"configs/{os.path.basename(path)}" in out
    assert not any(line.strip().startswith("configs/common.py") for line in lines)  # shared pieces only
    assert all(len(line) <= 110 for line in lines)


def test_short_help_is_the_same_and_comes_before_any_error(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert train.main(["mmjax.train", "-h"]) == 0
    short = capsys.readouterr()
    assert train.main(["mmjax.train", "--config.bad", "--help"]) == 0
    assert capsys.readouterr().out == short.out and "configs/llava_shapes.py" in short.out
    assert ":stage=2,pairs" in short.out and short.err == ""


def test_print_config_prints_the_overridden_config_and_builds_nothing(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--print_config must not build or train anything")

    monkeypatch.setattr(train, "train_and_evaluate", refuse)
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "w"
    code = train.main(
        [
            "mmjax.train",
            f"--config={CLIP}:tiny",
            "--config.optimizer.lr=0.5",
            "--print_config",
            f"--workdir={workdir}",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "optimizer.lr=0.5" in out and "task=contrastive" in out and "total_steps=20" in out
    assert "model.image.stem_channels=(8, 16, 32)" in out  # a tuple, as --config.KEY=VALUE takes it
    assert list(tmp_path.iterdir()) == []  # no workdir, nothing written


def test_print_config_needs_no_workdir_and_imports_no_data_stack():
    code = (
        "import sys; from mmjax import train; "
        "rc = train.main(['mmjax.train', '--config=configs/siglip_shapes.py:tiny', '--print_config']); "
        "assert 'mmjax.data.pipeline' not in sys.modules and 'grain' not in sys.modules; sys.exit(rc)"
    )
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "loss.impl=ring" in proc.stdout.splitlines()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--verbose"], "error: unexpected '--verbose'; usage: python -m mmjax.train --config="),
        (["--print_config=yes"], "error: unexpected '--print_config=yes'; usage:"),
        (["-x"], "error: unexpected '-x'; usage:"),
        (
            ["--config=configs/clip_shapes.py:huge", "--print_config"],
            "error: configs/clip_shapes.py: unknown argument 'huge'; use no argument or ':tiny'",
        ),
        (["--config=configs/clip_shapes.py"], "error: usage: python -m mmjax.train"),
        (["--print_config"], "error: usage: python -m mmjax.train"),
        (
            ["--config=configs/clip_shapes.py", "--print_config", "--config.optimizer.lrr=1"],
            "error: unknown config key 'optimizer.lrr'",
        ),
    ],
)
def test_bad_command_lines_are_one_line(args, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert train.main(["mmjax.train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_an_unknown_flag_through_the_entry_point_is_one_line():
    proc = run("-m", "mmjax.train", "--config=configs/clip_shapes.py:tiny", "--print_config", "--lr=1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: unexpected '--lr=1'; usage:") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("module", ["mmjax.zero_shot", "mmjax.generate"])
def test_the_hf_commands_answer_under_their_documented_names(module):
    proc = run("-m", module, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} ")


def test_generating_the_shapes_dataset_prints_only_mmjax_lines(tmp_path):
    code = (
        "import sys; from mmjax.data import shapes_builder; "
        f"sizes = dict(image_size=16, num_train=4, num_validation=2, num_test=2); "
        f"b = shapes_builder.ensure_built({str(tmp_path)!r}, **sizes); "
        "print('examples', b.info.splits['train'].num_examples, file=sys.stderr); "
        f"shapes_builder.ensure_built({str(tmp_path)!r}, **sizes)"
    )  # the second call: prepared, silent
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines[0].startswith("mmjax: generating the shapes dataset into ") and "s0_px16_n4_2_2" in lines[0]
    assert lines[1].startswith("mmjax: shapes dataset ready in ") and lines[2:] == ["examples 4"], lines
    for tfds_line in ("Downloading and preparing", "downloaded and prepared", "has no dataset_info.json"):
        assert tfds_line not in proc.stdout + proc.stderr


def test_a_failing_generation_still_raises(tmp_path, monkeypatch):
    from mmjax.data import shapes_builder

    def broken(seed, split, index, image_size):
        raise RuntimeError(f"cannot draw {split} example {index}")

    monkeypatch.setattr(shapes_builder, "encode_example", broken)
    with pytest.raises(RuntimeError, match="cannot draw train example 0"):
        shapes_builder.ensure_built(str(tmp_path), image_size=16, num_train=4, num_validation=2, num_test=2)
    assert not shapes_builder.get_builder(
        str(tmp_path), image_size=16, num_train=4, num_validation=2, num_test=2
    ).is_prepared()
