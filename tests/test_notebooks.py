"""The Colab notebooks (``colab/*.ipynb``) run top to bottom at tiny scale, and what they compute is checked.

Each notebook has a cell tagged ``parameters`` (papermill's convention); the tests insert a cell after it
that sets tiny values (``SCALE = "tiny"``, a temporary ``WORKDIR``, the session's ``DATA_DIR``), execute
the notebook in a fresh Jupyter kernel (``nbclient``) whose working directory is a temporary folder, and
read the one ``NOTEBOOK_SUMMARY {json}`` line that the notebook's last cell prints.

The three notebooks run at the same time, in three kernels, so the two cores of a CI machine are both busy:
the kernels spend most of their time in single-threaded tracing and XLA compilation.
"""

import concurrent.futures
import json
import math
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = ("01_clip_from_scratch", "02_early_vs_deep_fusion", "03_sharding_strategies")
MARK = "NOTEBOOK_SUMMARY "


def tiny_parameters(name: str, workdir: str, data_dir: str) -> dict:
    params = {"SCALE": "tiny", "WORKDIR": os.path.join(workdir, "run")}
    if name == "01_clip_from_scratch":
        params.update(STEPS=6, DATA_DIR=data_dir)
    elif name == "02_early_vs_deep_fusion":
        params.update(STEPS=2, EVAL_EVERY=2, EVAL_IMAGES=2, DATA_DIR=data_dir)
    return params


def parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def inject(nb, params: dict) -> None:
    """Insert papermill's ``injected-parameters`` cell after the ``parameters`` cell; every name must be
    one the notebook defines there (a renamed parameter must fail here, not be silently ignored)."""
    i = parameters_cell(nb)
    defined = {line.split("=")[0].strip() for line in nb.cells[i].source.splitlines() if "=" in line}
    assert set(params) <= defined, f"not parameters of this notebook: {set(params) - defined}"
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)


def kernel_env(data_dir: str, cache_dir: str) -> dict:
    """The test process's environment with one device (notebook 03 asks for its 8 itself), XLA's cheap
    compilation flags (as in conftest.py) and a compilation cache for this test session: the notebooks compile
    some programs twice (e.g. the fusion harness initialises again the state that training initialised)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags += ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
    env = dict(
        os.environ,
        XLA_FLAGS=" ".join(dict.fromkeys(flags)),
        JAX_PLATFORMS="cpu",
        MMJAX_DATA_DIR=data_dir,
        TFDS_DISABLE_GCS="1",
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def execute(name: str, workdir: str, data_dir: str, cache_dir: str):
    """(executed notebook, summary dict, seconds)."""
    nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
    inject(nb, tiny_parameters(name, workdir, data_dir))
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": workdir}})
    client.execute(env=kernel_env(data_dir, cache_dir))
    seconds = time.perf_counter() - t0
    lines = [
        line
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
        for line in o.get("text", "").splitlines()
        if line.startswith(MARK)
    ]
    assert len(lines) == 1, f"{name}: expected one {MARK.strip()} line, got {len(lines)}"
    return nb, json.loads(lines[0][len(MARK) :]), seconds


@pytest.fixture(scope="session")
def executed(data_dir, tmp_path_factory):
    """Every notebook executed at tiny scale (concurrently); ``{name: (notebook, summary, seconds)}``."""
    dirs = {name: str(tmp_path_factory.mktemp(name[:2])) for name in NOTEBOOKS}
    cache_dir = str(tmp_path_factory.mktemp("jax_cache"))
    # Notebooks 01 and 02 share the dataset: build it once before they start.
    from mmjax import config as config_lib
    from mmjax.data import shapes_builder

    d = config_lib.load_file(os.path.join(ROOT, "configs", "clip_shapes.py:tiny")).data
    shapes_builder.ensure_built(
        data_dir,
        seed=d.seed,
        image_size=d.image_size,
        num_train=d.num_train,
        num_validation=d.num_validation,
        num_test=d.num_test,
    )
    with concurrent.futures.ThreadPoolExecutor(len(NOTEBOOKS)) as pool:
        futures = {name: pool.submit(execute, name, dirs[name], data_dir, cache_dir) for name in NOTEBOOKS}
        concurrent.futures.wait(futures.values())
    # a failing notebook fails its own test (with nbclient's CellExecutionError: the cell and the traceback)
    return {name: f.exception() or f.result() for name, f in futures.items()}


def result(executed, name):
    out = executed[name]
    if isinstance(out, BaseException):
        raise out
    return out


def images_in(nb) -> int:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_colab_ready(name):
    """No outputs committed; the first code cell installs on Colab from MMJAX_GIT; a parameters cell."""
    nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in cells), f"{name}: clear the outputs"
    first = cells[0].source
    assert (
        '"google.colab" in sys.modules' in first and 'MMJAX_GIT = "https://github.com/mmjax/mmjax"' in first
    )
    assert "parameters" in cells[1].metadata.get("tags", []) and 'SCALE = "full"' in cells[1].source
    if name == "03_sharding_strategies":  # 8 devices must be asked for before JAX initialises
        assert (
            "xla_force_host_platform_device_count=8" in first
            and "import jax" not in first.split("XLA_FLAGS")[0]
        )


def test_clip_notebook(executed):
    nb, s, _ = result(executed, "01_clip_from_scratch")
    assert s["scale"] == "tiny" and s["steps"] == 6
    assert math.isfinite(s["final_loss"]) and 0 < s["final_loss"] < 10
    # the hand-run steps: the same inputs gave the same outputs (the metrics of step 0, whose learning rate
    # is 0, and the state after a later step, which moved the parameters), and the loss on their batch fell
    assert s["deterministic_step"] is True and s["moved_by_hand"] is True
    assert len(s["same_batch_losses"]) == 4 and s["same_batch_losses"][-1] < s["same_batch_losses"][0]
    for key in ("zero_shot_top1", "i2t_r1", "t2i_r1"):
        assert 0.0 <= s[key] <= 1.0
    # recomputed by hand from the checkpoint == what train_and_evaluate wrote (one tie may flip)
    assert abs(s["zero_shot_top1"] - s["results_zero_shot_top1"]) <= 1 / s["eval_examples"] + 1e-9
    assert images_in(nb) >= 3  # samples grid, loss curve, heat map


def test_fusion_notebook(executed):
    nb, s, _ = result(executed, "02_early_vs_deep_fusion")
    assert set(s["variants"]) == {"early", "deep"}
    for name, v in s["variants"].items():
        assert 0 < v["trainable_params"] < v["total_params"], name
        assert v["steps"] == [0, 2], name  # the start and every checkpoint
        assert all(0.0 <= a <= 1.0 for a in v["vqa_accuracy"]), name
    # Flamingo-style: one [IMG] position per image in the LM input; LLaVA-style: one per image token
    assert s["variants"]["deep"]["lm_positions_per_image"] == 1
    assert s["variants"]["early"]["lm_positions_per_image"] > 1
    # the masks drawn: early fusion's image+prompt prefix is bidirectional, deep fusion's self-attention
    # causal, and text before the image sees no visual token
    assert s["masks"] == {
        "early_prefix_bidirectional": True,
        "deep_self_attention_causal": True,
        "deep_text_before_image_sees_nothing": True,
    }
    assert images_in(nb) >= 2  # masks, accuracy/parameters plot


def test_sharding_notebook(executed):
    nb, s, _ = result(executed, "03_sharding_strategies")
    assert s["devices"] == 8
    rows = s["table"]
    assert [r["strategy"] for r in rows] == ["dp", "fsdp", "tp", "fsdp_tp"]
    by = {r["strategy"]: r for r in rows}
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses) and max(losses) - min(losses) < 1e-4  # same model, same step
    # the first step's learning rate is 0 (warmup), so its loss is the initial model's: the last step's loss
    # and gradient norm, and the weights after the steps (which moved), are the same under every strategy too
    last, norms = [r["last_loss"] for r in rows], [r["grad_norm"] for r in rows]
    assert max(last) - min(last) < 1e-4 and max(norms) - min(norms) < 1e-4 * max(norms)
    assert s["kernel_spread"] < 1e-5 and s["kernel_moved"] > 1e-4
    assert by["fsdp"]["param_bytes"] < by["dp"]["param_bytes"]  # FSDP splits what DP replicates
    assert by["fsdp_tp"]["param_bytes"] < by["tp"]["param_bytes"]
    assert by["dp"]["all-gather_count"] < by["fsdp"]["all-gather_count"]  # FSDP gathers weights
    assert images_in(nb) >= 2  # layouts, memory/communication chart


def test_notebooks_time(executed):
    """How long each took (reported with -rA / in the log; the budget is the whole file under ~90 s)."""
    for name in NOTEBOOKS:
        _, _, seconds = result(executed, name)
        print(f"{name}: {seconds:.1f} s")
        assert seconds < 300
