"""`omnimem-train prep FORMAT INPUT --out DIR`: summary on success, one-line errors with exit 2."""

import json

import pytest

from data_prep.converters import FORMATS
from omnimem_train.commands.cli import main
from omnimem_train.commands.prep import FORMAT_NAMES
from omnimem_train.data import read_manifest
from tests.data_prep.converters.conftest import write_jsonl


@pytest.fixture
def lvbench_input(tmp_path):
    q = "What colour?\n(A) red\n(B) green"
    return write_jsonl(tmp_path / "lvbench.jsonl",
                       {"key": "a", "type": "t", "qa": [{"uid": "u1", "question": q, "answer": "B"},
                                                        {"uid": "u2", "question": q, "answer": "C"}]},
                       "{oops")


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prep_cli(lvbench_input, media, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(["prep", "lvbench", str(lvbench_input), "--out", str(out),
                              "--media-dir", str(media), "--split", "val"], capsys)
    assert code == 0, err
    assert stdout.splitlines()[0] == "lvbench: 1 accepted, 2 rejected (answer not among options: 1, bad JSON: 1)"
    assert f"manifest: {out / 'manifest.jsonl'}" in stdout
    [s] = read_manifest(out / "manifest.jsonl", split="val")
    assert (s.id, s.answer, s.options) == ("u1", "B", ["red", "green"])
    assert [json.loads(x)["id"] for x in (out / "rejects.jsonl").read_text().splitlines()] == ["u2", None]


@pytest.mark.parametrize("argv, message", [
    (["prep", "nope", "{input}", "--out", "{out}"], "error: format: unknown 'nope'"),
    (["prep", "lvbench", "{missing}", "--out", "{out}"], "input file not found"),
    (["prep", "lvbench", "{input}", "--out", "{out}", "--duration", "long"], "--duration: only for videomme"),
    (["prep", "videomme", "{input}", "--out", "{out}", "--duration", "longest"], "duration: 'longest' is not"),
    (["prep", "lvbench", "{input}", "--out", "{out}", "--split", "dev"], "split: 'dev' is not one of"),
    (["prep", "lvbench", "{input}", "--out", "{out}", "--media-dir", "{missing}"], "media folder not found"),
    (["prep", "lvbench", "{input}", "--out", "{out}", "a=b"], "no key=value overrides"),
])
def test_prep_cli_errors(argv, message, lvbench_input, tmp_path, capsys):
    paths = {"input": lvbench_input, "out": tmp_path / "out", "missing": tmp_path / "missing"}
    code, stdout, err = _run([a.format(**paths) for a in argv], capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_format_names_match():
    assert tuple(FORMATS) == FORMAT_NAMES
