"""`benchmarks/gpu_check.sh --dry-run`: the prepared GPU check runs end to end on CPU (a tiny config, a
short stream) and prints its two tables."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STREAM_HEADER = ("| policy | stream min | tokens | groups | wall s | decoder s | tokens/s | peak GiB | "
                 "memory left MiB | status |")
TRAIN_HEADER = "| stream min | group | tokens | loss | grad norm | step s | peak GiB | trainable params | status |"


def test_gpu_check_dry_run():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert STREAM_HEADER in out and TRAIN_HEADER in out
    lines = out.splitlines()
    rows = lines[lines.index(STREAM_HEADER) + 2:]
    omnimem = next(r for r in rows if r.startswith("| omnimem"))
    full = next(r for r in rows if r.startswith("| full"))
    assert omnimem.endswith("| complete |") and full.endswith("| complete |")
    # The compressed memory is bounded; full memory keeps the whole stream.
    left = {name: float(row.split("|")[9].replace(",", "")) for name, row in (("omnimem", omnimem), ("full", full))}
    assert left["omnimem"] < left["full"]
    train = lines[lines.index(TRAIN_HEADER) + 2]
    assert train.endswith("ZeRO-2, bf16 False: ok |"), train
    assert float(train.split("|")[4]) > 0  # the loss
    assert "gpu_check: done" in out
