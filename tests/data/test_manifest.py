"""omnimem_train.data.manifest: the normalized JSONL sample manifest."""

import json
import os

import datasets
import pytest

from omnimem_train.data import Sample, read_manifest, to_dataset, write_manifest
from omnimem_train.errors import ConfigError
from omnimem_train.models.prompt import format_question


def line(**changes):
    """A valid manifest line (dict), with `changes` applied (value ... deletes the key)."""
    d = {
        "id": "s1",
        "video": "clips/a.mp4",
        "audio": None,
        "duration": 4.0,
        "question": "What colour is the square?",
        "options": ["red", "green", "blue", "yellow"],
        "answer": "B",
        "question_type": "colour",
        "split": "train",
    }
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return d


def write_lines(path, *lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def samples_in(folder):
    return [
        Sample(
            id="mc",
            video=str(folder / "clips" / "a.mp4"),
            duration=4.0,
            question="What colour is the square?",
            options=["red", "green", "blue", "yellow"],
            answer="D",
            question_type="colour",
            split="train",
            media={"has_audio": True, "fps": 8.0, "width": 56, "height": 56},
            events=[{"start": 0.0, "end": 4.0, "label": "yellow"}],
            extra={"source": "tiny", "nested": {"k": [1, 2]}},
        ),
        Sample(
            id="open",
            video=None,
            audio=str(folder / "audio" / "b.wav"),
            duration=65.5,
            question="What is said?",
            options=[],
            answer="hello there",
            question_type="asr",
            split="val",
        ),
        Sample(
            id="outside",
            video="/elsewhere/c.mp4",
            audio="/elsewhere/c.wav",
            duration=1.0,
            question="Q?",
            options=["x", "y"],
            answer="A",
            question_type="other",
            split="test",
        ),
    ]


def test_round_trip(tmp_path):
    samples = samples_in(tmp_path)
    path = write_manifest(tmp_path / "manifest.jsonl", samples)
    assert read_manifest(path) == samples
    # Paths inside the manifest's folder are stored relative to it; others as given.
    stored = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(d["video"], d["audio"]) for d in stored] == [
        ("clips/a.mp4", None),
        (None, "audio/b.wav"),
        ("/elsewhere/c.mp4", "/elsewhere/c.wav"),
    ]
    assert list(stored[0])[:9] == [
        "id", "video", "audio", "duration", "question", "options", "answer", "question_type", "split"
    ]  # fmt: skip
    assert "media" not in stored[1] and "events" not in stored[1]


def test_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "m.jsonl"
    write_manifest(path, samples_in(tmp_path))
    write_manifest(path, samples_in(tmp_path)[:1])
    assert [s.id for s in read_manifest(path)] == ["mc"]
    assert sorted(os.listdir(path.parent)) == ["m.jsonl"]  # no temp file left
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_relative_paths_resolve_against_manifest_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_lines(tmp_path / "data" / "m.jsonl", line(video="clips/a.mp4", audio="../sounds/a.wav"))
    monkeypatch.chdir(tmp_path)
    (s,) = read_manifest("data/m.jsonl")
    assert s.video == str(tmp_path / "data" / "clips" / "a.mp4")
    assert s.audio == str(tmp_path / "sounds" / "a.wav")


def test_split_filter_and_blank_lines(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl", line(id="a"), "", "   ", line(id="b", split="val"), line(id="c", split="test")
    )
    assert [s.id for s in read_manifest(path)] == ["a", "b", "c"]
    assert [s.id for s in read_manifest(path, split="val")] == ["b"]
    with pytest.raises(ConfigError, match="split: 'dev' is not one of train, val, test"):
        read_manifest(path, split="dev")


@pytest.mark.parametrize(
    "bad, field, problem",
    [
        ('{"id": "s2", "video": ', "line", "invalid JSON"),
        ("[1, 2]", "line", "expected a JSON object, got list"),
        (line(id="s2", question_type=...), "question_type", "missing required field"),
        (line(id="s2", split=...), "split", "missing required field"),
        (line(id="s2", duration="4"), "duration", "expected a number of seconds, got string"),
        (line(id="s2", duration=True), "duration", "expected a number of seconds, got boolean"),
        (line(id="s2", duration=0), "duration", "must be a finite number > 0"),
        (line(id="s2", question=3), "question", "expected a string, got number"),
        (line(id="s2", video=5), "video", "expected a string or null, got number"),
        (line(id="s2", video=None), "video", "video and audio are both null"),
        (line(id="s2", options="red"), "options", "expected a list of strings, got string"),
        (line(id="s2", options=["red", 2]), "options", "option 1 is number"),
        (line(id="s2", options=list("abcdefghijk")), "options", "11 options, at most 10"),
        (line(id="s2", answer="E"), "answer", "'E' is not among the options' letters A-D"),
        (line(id="s2", answer="green"), "answer", "'green' is not among the options' letters A-D"),
        (line(id="s2", options=[], answer=""), "answer", "empty string"),
        (line(id="s2", split="dev"), "split", "'dev' is not one of train, val, test"),
        (line(id="s2", media=[]), "media", "expected an object or null, got list"),
        (line(id="s2", events={}), "events", "expected a list or null, got object"),
        (line(), "id", "duplicate of line 1"),
    ],
)
def test_validation_errors_name_file_line_and_field(tmp_path, bad, field, problem):
    path = write_lines(tmp_path / "m.jsonl", line(), bad, line(id="s3"))
    with pytest.raises(ConfigError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:2: {field}: ")
    assert problem in msg


def test_missing_manifest(tmp_path):
    with pytest.raises(ConfigError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_check_media(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", line(id="a"), line(id="b", video="clips/b.mp4"))
    assert len(read_manifest(path)) == 2  # not checked by default
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    with pytest.raises(ConfigError) as info:
        read_manifest(path, check_media=True)
    assert str(info.value) == f"{path}:2: video: file not found: {tmp_path / 'clips' / 'b.mp4'}"
    write_lines(path, line(id="a", audio="a.wav"))
    with pytest.raises(ConfigError, match=r":1: audio: file not found"):
        read_manifest(path, check_media=True)


def test_unknown_keys_kept_in_extra_and_written_back(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", line(source="videomme", meta={"domain": "news"}, rank=3))
    (s,) = read_manifest(path)
    assert s.extra == {"source": "videomme", "meta": {"domain": "news"}, "rank": 3}
    out = write_manifest(tmp_path / "out" / "m.jsonl", [s])
    d = json.loads(out.read_text())
    assert (d["source"], d["meta"], d["rank"]) == ("videomme", {"domain": "news"}, 3)


def test_extra_cannot_shadow_fields():
    s = samples_in(__import__("pathlib").Path("/x"))[0]
    s.extra = {"answer": "A"}
    with pytest.raises(ValueError, match="shadow"):
        s.to_dict()


def test_answer_text_matches_prompt_and_scoring_format(tmp_path):
    mc, open_ended, _ = samples_in(tmp_path)
    assert mc.answer_text() == "D. yellow" and mc.answer_index == 3 and mc.is_multiple_choice
    assert mc.answer_text() in format_question(mc.question, mc.options).splitlines()
    assert open_ended.answer_text() == "hello there" and open_ended.answer_index is None


def test_answer_text_in_option_format(tmp_path):
    mc, open_ended, _ = samples_in(tmp_path)
    assert mc.answer_text("option") == "yellow" and mc.answer_text("letter") == "D. yellow"
    assert open_ended.answer_text("option") == open_ended.answer_text("letter") == "hello there"
    # to_dataset's answer_text column stays in the default (letter) format
    assert to_dataset([mc])[0]["answer_text"] == "D. yellow"


def test_to_dataset(tmp_path):
    samples = samples_in(tmp_path)
    ds = to_dataset(samples)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 3
    assert ds.column_names == [
        "id", "video", "audio", "duration", "question", "options", "answer", "answer_text",
        "question_type", "split", "media", "events", "extra",
    ]  # fmt: skip
    assert ds[0]["options"] == ["red", "green", "blue", "yellow"]
    assert ds[0]["answer_text"] == "D. yellow"
    assert ds[1]["options"] == [] and ds[1]["video"] is None and ds[1]["duration"] == 65.5
    assert json.loads(ds[0]["media"])["fps"] == 8.0 and ds[1]["media"] is None
    assert json.loads(ds[0]["extra"]) == {"source": "tiny", "nested": {"k": [1, 2]}}
    # The schema is fixed: open-ended-only data still has list<string> options.
    only_open = to_dataset(samples[1:2])
    assert only_open.features["options"] == ds.features["options"]
    assert len(to_dataset([])) == 0


def test_samples_keep_their_line_numbers_which_are_never_written(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", line(id="a"), "", line(id="b", split="val"), line(id="c"))
    assert [(s.id, s.line) for s in read_manifest(path)] == [("a", 1), ("b", 3), ("c", 4)]
    assert [(s.id, s.line) for s in read_manifest(path, split="train")] == [("a", 1), ("c", 4)]
    samples = read_manifest(path)
    assert all("line" not in s.to_dict() for s in samples)
    again = read_manifest(write_manifest(tmp_path / "again.jsonl", samples))
    assert again == samples and [s.line for s in again] == [1, 2, 3]  # equal, whatever the line
