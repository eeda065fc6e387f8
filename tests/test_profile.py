import json
import subprocess
import sys

from mmjax import models


def test_profile_cli_json_lists_every_model():
    out = subprocess.run(
        [sys.executable, "-m", "mmjax.profile", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["model"] for r in rows] == models.list_models("two_tower")
    b16 = next(r for r in rows if r["model"] == "clip-vit-b16")
    assert b16["params"] == 149_620_737 and b16["image_params"] + b16["text_params"] + 1 == b16["params"]
    assert round(b16["gflops"], 2) == 41.09


def test_profile_cli_rejects_unknown_arguments():
    proc = subprocess.run(
        [sys.executable, "-m", "mmjax.profile", "--csv"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unexpected argument '--csv'")
