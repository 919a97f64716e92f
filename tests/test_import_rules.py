"""The package's import rules (docs/ARCHITECTURE.md): every `omnimem_train` import, lazy ones
included, is parsed from the source; an import cycle between modules or an edge the layering
forbids fails, naming the file and the import."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "omnimem_train"

# part -> the parts it may import (its own modules always). A part is a subpackage, or a
# top-level module of the package. Only `commands` may import `data_prep`, and nothing imports
# `commands` (the console script enters there).
ALLOWED = {
    "": set(),  # the package's own __init__
    "errors": set(),
    "utils": {"errors"},
    "config": {"errors", "utils"},
    "media": {"errors", "utils"},
    "models": {"errors", "utils", "config", "media"},
    "memory": {"errors", "utils", "config", "models"},
    "data": {"errors", "utils", "config", "models"},
    "streaming": {"errors", "utils", "config", "media", "memory", "models"},
    "train": {"errors", "utils", "config", "data", "media", "memory", "models", "streaming"},
    "eval": {"errors", "utils", "config", "data", "media", "memory", "models", "streaming"},
    "export": {"errors", "utils", "config", "memory", "models"},
    "serving": {"errors", "utils", "config", "models", "streaming"},
    "commands": {"errors", "utils", "config", "data", "media", "memory", "models", "streaming", "train", "eval",
                 "export", "serving", "data_prep"},
}
# Narrower still: (part, part it imports) -> the only modules it may use there. memory and streaming
# know the adapter interface (and the prompt), never a model family or its loader; the layers below
# the config loader see its typed settings only.
ONLY = {("memory", "models"): {"models.base"}, ("streaming", "models"): {"models.base", "models.prompt"},
        ("data", "models"): {"models.prompt"}, ("memory", "config"): {"config.schema"},
        ("streaming", "config"): {"config.schema"}, ("models", "config"): {"config.schema"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported module) of every import of the package or data_prep in `path`; `from P import
    name` counts as an import of P.name when that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                       for a in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in targets if t.split(".")[0] in ("omnimem_train", "data_prep")]
    return found


def _part(module: str) -> str:
    return "data_prep" if module.startswith("data_prep") else module.split(".")[1] if "." in module else ""


def test_no_forbidden_import():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        mine = _part(name)
        if mine not in ALLOWED:
            bad.append(f"{path.relative_to(ROOT)}: part {mine!r} is not in the import rules")
            continue
        for line, target in _imports(path, modules):
            theirs = _part(target)
            sub = ".".join(target.split(".")[1:3])
            if theirs == mine:
                continue
            if theirs not in ALLOWED[mine]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {target}")
            elif (mine, theirs) in ONLY and sub not in ONLY[mine, theirs]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} may use only {sorted(ONLY[mine, theirs])} of "
                           f"{theirs}, not {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    modules = _modules()
    graph = {name: sorted({t for _, t in _imports(path, modules) if t in modules and t != name})
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("rule", ["cycle", "edge", "family"])
def test_the_checks_catch_a_planted_violation(rule, tmp_path, monkeypatch):
    """The checks bite: a copy of the package with one bad import planted fails them."""
    import shutil

    copy = tmp_path / "omnimem_train"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = {"cycle": ("config/schema.py", "from omnimem_train.config import load\n"),
               "edge": ("memory/budgets.py", "from omnimem_train.train import run\n"),
               "family": ("streaming/engine.py", "import omnimem_train.models.qwen2_5_omni\n")}[rule]
    target = copy / planted[0]
    target.write_text(planted[1] + target.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", copy)
    check = test_no_import_cycle if rule == "cycle" else test_no_forbidden_import
    with pytest.raises(AssertionError, match="config.schema|memory imports|may use only"):
        check()
