"""data_prep.converters.common: option/answer parsing, record reading, probing once, accounting."""

import pytest

from data_prep.converters import common
from data_prep.converters.common import (
    BAD_JSON,
    BAD_OPTIONS,
    Row,
    RowError,
    answer_letter,
    iter_records,
    options_field,
    run_conversion,
    split_options,
)
from omnimem_train.errors import ConfigError

from .conftest import check_outputs, rejects_of


def test_split_options():
    q = "What colour is it?\n(A) red\n(B) dark\ngreen\n(C) blue"
    assert split_options(q) == ("What colour is it?", ["red", "dark"], "green\n(C) blue")
    q = "Which one?\nA. one\n\nB. two\nC) three\nAnswer with the letter."
    assert split_options(q) == ("Which one?", ["one", "two", "three"], "Answer with the letter.")
    assert split_options("A man walks in. What happens?") == ("A man walks in. What happens?", [], "")
    assert split_options("Q?\nA. only one") == ("Q?\nA. only one", [], "")  # a single option is no list
    assert split_options("Q?\nB. x\nC. y") == ("Q?\nB. x\nC. y", [], "")  # must start at A


def test_options_field():
    assert options_field(["A. red", "B. green"]) == ["red", "green"]
    assert options_field(["(A) red", "(B) green"]) == ["red", "green"]
    assert options_field(["red", "B. green"]) == ["red", "B. green"]  # stripped only when all have them
    assert options_field(["B. red", "A. green"]) == ["B. red", "A. green"]
    assert options_field({"B": "green", "A": "red"}) == ["red", "green"]
    assert options_field([1, 2.5]) == ["1", "2.5"]
    for bad in ({"A": "x", "C": "y"}, [], ["x", ""], ["x", None], "red", list("ABCDEFGHIJK")):
        with pytest.raises(RowError) as e:
            options_field(bad)
        assert e.value.kind == BAD_OPTIONS
    with pytest.raises(RowError, match="missing field"):
        options_field(None)


def test_answer_letter():
    assert [answer_letter(a) for a in ("B", " (C) ", "D.", "b", "B. green", "", None)] == [
        "B", "C", "D", None, None, None, None]
    assert answer_letter("B. green", prefix=True) == "B"
    assert answer_letter("(C) blue", prefix=True) == "C"
    assert answer_letter("A square moves", prefix=True) == "A"  # callers only use it with options
    assert answer_letter("Apples", prefix=True) is None


def test_iter_records(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{bad\n[1]\n\xff\n')
    got = list(iter_records(p))
    assert [r for r, _ in got] == [1, 3, 4, 5]
    assert got[0][1] == {"a": 1} and got[2][1] == [1]
    assert isinstance(got[1][1], RowError) and got[1][1].kind == BAD_JSON
    assert isinstance(got[3][1], RowError) and "UTF-8" in got[3][1].reason
    # .json: an array, one object, or JSON Lines
    j = tmp_path / "x.json"
    j.write_text('[{"a": 1}, {"a": 2}]')
    assert list(iter_records(j)) == [(1, {"a": 1}), (2, {"a": 2})]
    j.write_text('{"a": 1}\n{"a": 2}\n')
    assert list(iter_records(j)) == [(1, {"a": 1}), (2, {"a": 2})]
    j.write_text('[{"a": 1}, {"a": ')
    with pytest.raises(ConfigError, match="invalid JSON"):
        list(iter_records(j))
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ConfigError, match="cannot read as parquet"):
        list(iter_records(bad))


def _rows(media):
    def fields(i, video):
        return {"id": f"s{i}", "video": video, "question": "Q?", "options": ["x", "y"], "answer": "A",
                "question_type": "t", "split": "test", "extra": {"k": None, "n": i}}

    def read(source, media_dir):
        yield Row(1, id="s1", fields=fields(1, "a.mp4"))
        yield Row(2, id="s2", fields=fields(2, "a.mp4"))
        yield Row(3, id="s3", fields=fields(3, "missing.mp4"))
        yield Row(4, id="s4", fields=fields(4, "missing.mp4"))
        yield Row(5, skip="filtered")
        yield Row(6, id="s1", fields=None, error=RowError(BAD_JSON, "line\n two"))

    return read


def test_probe_once_and_accounting(media, tmp_path, monkeypatch):
    calls = []
    real = common.probe
    monkeypatch.setattr(common, "probe", lambda p: calls.append(p) or real(p))
    src = tmp_path / "in.json"
    src.write_text("[]")
    result = run_conversion("fake", src, tmp_path / "out", media, _rows(media))
    assert calls == [str(media / "a.mp4")]  # probed once; missing files are not probed
    samples, rejects = check_outputs(result)
    assert (result.rows, result.accepted, result.rejected, result.skipped) == (5, 2, 3, 1)
    assert [s.extra for s in samples] == [{"n": 1}, {"n": 2}]  # None extras dropped
    assert [(r["row"], r["kind"]) for r in rejects] == [(3, "missing media"), (4, "missing media"), (6, BAD_JSON)]
    assert rejects[2]["reason"] == "line two"  # one line
    assert result.summary() == "fake: 2 accepted, 3 rejected (bad JSON: 1, missing media: 2), 1 skipped (filtered: 1)"
    assert rejects_of(result) == rejects


def test_bad_paths(media, tmp_path):
    with pytest.raises(ConfigError, match="input file not found"):
        run_conversion("x", tmp_path / "nope.json", tmp_path / "out", None, lambda s, m: [])
    src = tmp_path / "in.json"
    src.write_text("[]")
    with pytest.raises(ConfigError, match="media folder not found"):
        run_conversion("x", src, tmp_path / "out", tmp_path / "nope", lambda s, m: [])
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(ConfigError, match="would be overwritten"):
        run_conversion("x", tmp_path / "manifest.jsonl", tmp_path, None, lambda s, m: [])
