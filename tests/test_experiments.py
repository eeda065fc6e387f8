"""The experiment harnesses: sharding strategies (HLO parsing, one small end-to-end run) and the
fusion comparison (one tiny variant end to end)."""

import csv
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def harness(name="sharding_strategies"):
    path = os.path.join(ROOT, "experiments", name, "run.py")
    spec = importlib.util.spec_from_file_location(f"{name}_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shape_bytes_and_collective_parsing_on_a_compiled_program():
    run = harness()
    assert run.shape_bytes("f32[8,64]{1,0}") == 8 * 64 * 4
    assert run.shape_bytes("(f32[8]{0}, bf16[2,3]{1,0})") == 32 + 12
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))

    def f(a):  # one all-reduce of 16 floats, one all-gather into 8 x 16 floats
        return jax.lax.psum(a, "x"), jax.lax.all_gather(a, "x", tiled=True)

    g = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=(P(), P()), check_vma=False))
    hlo = g.lower(jnp.zeros((8 * 16,), jnp.float32)).compile().as_text()
    found = run.collectives(hlo)
    assert found["all-reduce"] == {"count": 1, "bytes": 16 * 4}
    assert found["all-gather"] == {"count": 1, "bytes": 8 * 16 * 4}
    assert found["reduce-scatter"]["count"] == 0


def test_harness_compares_dp_and_fsdp(tmp_path):
    run = harness()
    assert (
        run.main(
            [
                "run.py",
                "--mesh",
                "fsdp=8",
                "--strategies",
                "dp,fsdp",
                "--batch",
                "16",
                "--no-time",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    stem = tmp_path / "cpu_clip-shapes_data1_fsdp8_tensor1"
    with open(f"{stem}.csv") as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"dp", "fsdp"}
    for key in ("param_bytes", "opt_bytes"):
        np.testing.assert_allclose(int(rows["fsdp"][key]) * 8, int(rows["dp"][key]), rtol=0.05)
    assert int(rows["fsdp"]["all-gather_count"]) > int(rows["dp"]["all-gather_count"])
    assert "| fsdp |" in open(f"{stem}.md").read() and os.path.getsize(f"{stem}.png") > 10_000


def test_fusion_comparison_harness(tmp_path, monkeypatch):
    """One variant end to end (the others differ only in their configs): curve, sizes, files."""
    monkeypatch.setenv("MMJAX_DATA_DIR", str(tmp_path / "tfds"))
    run = harness("fusion_comparison")
    assert (
        run.main(
            [
                "run.py",
                "--tiny",
                "--variants",
                "deep",
                "--steps",
                "2",
                "--eval-every",
                "1",
                "--eval-images",
                "2",
                "--time-rounds",
                "1",
                "--workdir",
                str(tmp_path / "runs"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    stem = tmp_path / "out" / "cpu_tiny_fusion_comparison"
    with open(f"{stem}.csv") as f:
        (row,) = list(csv.DictReader(f))
    with open(f"{stem}_curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert [(c["variant"], int(c["step"]), int(c["vqa_questions"])) for c in curves] == [
        ("deep", s, 12) for s in (0, 1, 2)
    ]  # the start and each checkpoint; 2 images x 6 questions
    assert row["variant"] == "deep" and int(row["lm_positions_per_image"]) == 1
    assert int(row["visual_tokens_per_image"]) == 8 and float(row["tokens_per_example"]) > 5
    assert 0 < int(row["trainable_params"]) < int(row["total_params"]) and float(row["step_s"]) > 0
    assert "deep fusion" in open(f"{stem}.md").read() and os.path.getsize(f"{stem}.png") > 10_000
    cfg = run.variant_config(
        "early_frozen_lm", run.argparse.Namespace(tiny=True, steps=2, eval_every=1, eval_images=2)
    )
    assert cfg.optimizer.freeze_regex == (r"image/.*", r"lm/.*") and cfg.model.type == "early_fusion"


def test_vqa_errors_split_targets_and_tell_a_prior_from_an_even_spread():
    path = os.path.join(ROOT, "experiments", "fusion_comparison", "vqa_errors.py")
    spec = importlib.util.spec_from_file_location("vqa_errors", path)
    errors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(errors)
    from mmjax.data import shapes

    assert shapes.is_held_out("green", "star") and not shapes.is_held_out("green", "circle")
    green_star = shapes.COLOURS.index("green") * len(shapes.SHAPES) + shapes.SHAPES.index("star")
    rows = [
        (0, "what shape is the green object?", "star", "shape"),  # held-out target, answered "circle"
        (0, "what shape is the biggest object?", "star", "shape"),  # the label: green star, right
        (0, "what colour is the triangle?", "red", "colour"),  # a seen target, right
        (0, "is the green star on the left?", "yes", "position"),
        (0, "is the green star to the left of the red circle?", "no", "position"),
    ]
    predicted = ["circle", "star", "red", "no", "no"]
    out = errors.analyse(rows, predicted, [green_star])
    assert out["accuracy_shape_held_out_target"] == 50.0 and out["questions_shape_held_out_target"] == 2
    assert out["accuracy_colour_seen_target"] == 100.0
    assert out["accuracy_position_one_object"] == 0.0 and out["accuracy_position_two_object"] == 100.0
    assert out["accuracy_shape_biggest"] == 100.0 and out["accuracy_shape_named"] == 0.0
    assert out["questions_colour_named"] == 1 and "accuracy_colour_biggest" not in out
    assert out["wrong_answers_naming_a_seen_pair"] == 100.0  # "green circle" was seen in training
    # green's wrong shapes besides star: circle, square, triangle, diamond seen; cross held out
    assert out["the_same_if_spread_evenly"] == 80.0

    # with the scenes: named questions by main object / distractor, and wrong answers that name another
    # object's attribute (here the main green star's, for a question about the red triangle)
    C, S = shapes.COLOURS.index, shapes.SHAPES.index
    scene = shapes.Scene(
        (
            shapes.Obj(C("green"), S("star"), 2, 0, 0, 0, 0, 20),
            shapes.Obj(C("red"), S("triangle"), 0, 2, 2, 50, 50, 8),
        ),
        0,
        0,
        0,
        64,
    )
    rows = [
        (0, "what shape is the green object?", "star", "shape"),  # the main object, right
        (0, "what shape is the red object?", "triangle", "shape"),  # the distractor, answered "star"
        (0, "what colour is the triangle?", "red", "colour"),  # the distractor, answered "blue"
    ]
    out = errors.analyse(rows, ["star", "star", "blue"], [green_star], [scene])
    assert out["accuracy_shape_named_main"] == 100.0 and out["accuracy_shape_named_distractor"] == 0.0
    assert out["accuracy_colour_named_distractor"] == 0.0 and "accuracy_colour_named_main" not in out
    assert out["wrong_named_answers_of_another_object"] == 50.0  # "star" is the green star's; blue nobody's
    # the other objects' attribute among the wrong options: star, 1 of 5 shapes; green, 1 of 7 colours
    assert out["wrong_named_answers_of_another_object_if_spread_evenly"] == round(
        100 * (1 / 5 + 1 / 7) / 2, 1
    )


def test_vqa_table_puts_validation_beside_test_and_orders_steps():
    path = os.path.join(ROOT, "experiments", "fusion_comparison", "vqa_table.py")
    spec = importlib.util.spec_from_file_location("vqa_table", path)
    vqa_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vqa_table)
    rows = [
        {"tag": "a", "split": "test", "vqa_accuracy": 70.0},
        {"tag": "a", "split": "validation", "vqa_accuracy": 80.0, "accuracy_count": 99.0},
        {"tag": "a", "split": "validation", "step": 400, "vqa_accuracy": 60.0},
        {"tag": "b", "split": "validation", "vqa_accuracy": 50.0},
    ]
    lines = vqa_table.table(rows, []).splitlines()
    assert lines[2].startswith("| a | 400 | 60.0 / – |")
    assert lines[3].startswith("| a | last | 80.0 / 70.0 | – / – | – / – | 99.0 / – |")
    assert lines[4].startswith("| b | last | 50.0 / – |") and len(lines) == 5
    assert vqa_table.table(rows, ["b"]).splitlines()[2].startswith("| b |")


def test_probe_ridge_reads_a_linear_code_and_not_noise():
    path = os.path.join(ROOT, "experiments", "fusion_comparison", "probes.py")
    spec = importlib.util.spec_from_file_location("probes", path)
    probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probes)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    coded = np.eye(3)[labels] + 0.1 * rng.normal(size=(600, 3))
    assert probes.ridge_accuracy(np.concatenate([coded, rng.normal(size=(600, 5))], 1), labels, 3) == 100.0
    assert probes.ridge_accuracy(rng.normal(size=(600, 8)), labels, 3) < 45.0  # chance is 33 %
    # scored on a subset: half the examples carry the code, the other half noise
    even = np.arange(600) % 2 == 0
    mixed = np.where(even[:, None], coded, rng.normal(size=(600, 3)))
    assert probes.ridge_accuracy(mixed, labels, 3, scored=even) > 90.0
    assert probes.ridge_accuracy(mixed, labels, 3, scored=~even) < 50.0
    table = probes.probe_table({"mixed": mixed}, {"all": (labels, 3), "even": (labels, 3)}, {"even": even})
    assert table["mixed"]["even"] > 90.0 > table["mixed"]["all"]
    # the probes' questions: one-object scenes, or two-or-more-object "to the left/right of" questions
    one, two = probes.position_questions(6, 1), probes.position_questions(6, 2)
    assert all(len(e["scene"].objects) == 1 and " of the " not in q for e, q, _ in one)
    assert all(len(e["scene"].objects) >= 2 and " of the " in q and a in ("yes", "no") for e, q, a in two)
