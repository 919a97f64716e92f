"""Shared by the benchmarks: run each case in a fresh interpreter and read its peak memory.

Linux carries a process's peak RSS across exec (a child's ru_maxrss starts at its parent's peak),
so a driver that never imports torch spawns one worker per case (`spawn`); the worker runs the
case and prints one `RESULT <json>` line (`worker_main`), and reads its own peaks (`rss_mib`,
`proc_status`, `reset_hwm`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # Built-in checkpoints live under the repo's checkpoints/ whatever the working directory is.
    os.environ.setdefault("OMNIMEM_HOME", str(REPO / "checkpoints"))


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def proc_status(key: str) -> float | None:
    """A /proc/self/status memory line (VmHWM, VmRSS) in MiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker_main(spec: str, run_case: Callable[..., dict]) -> None:
    repo_on_path()
    print("RESULT " + json.dumps(run_case(**json.loads(spec))), flush=True)


def spawn(script: str | Path, case: dict) -> dict:
    """Run `script --worker <case json>` in a fresh interpreter and return its RESULT."""
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", json.dumps(case)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker failed (exit {proc.returncode}) for {case}")
    return json.loads(lines[-1][len("RESULT "):])
