"""The loader benchmark (experiments/loader/run.py) end to end at a tiny size: its table and CSV."""

import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "loader", "run.py")


def _script():
    """The script as a module (for its column names); importing it runs nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("loader_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loader_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "out"
    # a subprocess: Grain's workers and the reference's Pool are spawned, and re-import the script as main
    proc = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--images=16",
            "--batch=8",
            "--batches=2",
            "--workers=0,1",
            "--rounds=1",
            "--sample=8",
            f"--work={tmp_path / 'work'}",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    with open(out / "loader.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["workers"]) for r in rows] == [0, 1]
    assert tuple(rows[0]) == _script().COLUMNS  # every column, in the script's order
    for r in rows:
        mmjax, reference = float(r["mmjax_images_per_s"]), float(r["reference_images_per_s"])
        assert mmjax > 0 and reference > 0
        assert abs(float(r["ratio"]) - mmjax / reference) < 1e-6 * max(1.0, mmjax / reference)
        assert float(r["mmjax_startup_s"]) > 0 and float(r["reference_startup_s"]) > 0

    table = (out / "loader.md").read_text()
    assert "| workers | mmjax images/s | reference images/s | ratio (mmjax / reference) |" in table
    assert "decode (Pillow JPEG -> RGB)" in table and "loader workers" in table
    report = json.loads((out / "loader.json").read_text())
    assert report["estimate"]["workers_needed"] >= 1
    assert len(report["measurements"]) == 4  # 2 worker counts x 2 sides x 1 round
    assert "| 1 |" in proc.stdout  # the table is printed too
