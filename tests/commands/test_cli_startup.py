"""`omnimem-train --help`, every subcommand's `--help` and a usage error answer without importing
torch, transformers or DeepSpeed (seconds of start-up): those load only inside the commands."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "deepspeed", "peft", "accelerate", "datasets", "numpy")

_PROBE = r"""
import contextlib, io, json, sys

from omnimem_train.commands.cli import build_parser, main

names = list(build_parser()._subparsers._group_actions[0].choices)
codes = {}
for argv in [["--help"]] + [[name, "--help"] for name in names] + [["infer", "--no-such-flag"]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            codes[" ".join(argv)] = e.code
print(json.dumps({"names": names, "codes": codes, "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def _probe() -> dict:
    code = f"HEAVY = {HEAVY!r}\n" + _PROBE
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_and_usage_errors_import_no_heavy_library():
    found = _probe()
    assert {"infer", "train", "eval", "calibrate", "pipeline", "export", "prep"} <= set(found["names"])
    assert found["codes"].pop("infer --no-such-flag") == 2  # argparse's usage error
    assert found["codes"] == {k: 0 for k in ["--help"] + [f"{n} --help" for n in found["names"]]}
    assert found["loaded"] == []
