"""The metrics of a run: ``WORKDIR/metrics.jsonl`` (one JSON object per logged step) and TensorBoard events in
``WORKDIR/tb``, written by process 0; readable while a run writes them (to watch it from another process).
"""

from __future__ import annotations

import json
import os

import jax


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file; a last line cut short (a process killed while writing it) is left
    out."""
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip() and i < len(lines) - 1:  # damage before the end is not a cut-short write
                raise
    return records


def last_logged_step(workdir: str) -> int:
    """The step of the last complete record of ``workdir``'s ``metrics.jsonl`` (0 if none yet); safe to call
    while a run is writing it (to watch a run from another process)."""
    path = os.path.join(workdir, "metrics.jsonl")
    records = read_jsonl(path) if os.path.exists(path) else []
    return records[-1]["step"] if records else 0


class MetricsLog:
    """Metrics as JSON lines and TensorBoard events; only process 0 writes.

    A resumed run keeps the records up to the step it resumes from (``resume_step``) and drops later ones,
    which the steps it repeats log again. ``history``: the records written since, after (on process 0) the
    ones kept."""

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        self.history = []  # process 0's (it rewrites the file below: another process could read half)
        if self.active and os.path.exists(self.path):  # keep what was logged up to the restored checkpoint
            self.history = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        self.tb = None
        if self.active:
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(record)
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()
