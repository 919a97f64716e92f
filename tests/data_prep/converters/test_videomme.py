"""data_prep.converters.videomme: the published parquet (and the nested release JSON)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.converters import videomme
from omnimem_train.errors import ConfigError

from .conftest import check_outputs, reasons_by_id

OPTIONS = ["A. red", "B. green", "C. blue", "D. yellow"]


def qrow(qid, video, duration, answer="B", **changes):
    row = {"video_id": qid.split("-")[0], "duration": duration, "domain": "Knowledge",
           "sub_category": "Humanity & History", "url": f"https://www.youtube.com/watch?v={video}",
           "videoID": video, "question_id": qid, "task_type": "Counting Problem",
           "question": "What colour is the square?", "options": OPTIONS, "answer": answer}
    row.update(changes)
    return row


ROWS = [
    qrow("001-1", "a", "short"),                   # ok
    qrow("001-2", "a", "short", answer="E"),       # answer not among options
    qrow("002-1", "nope", "long"),                 # missing media
    qrow("003-1", "b", "long", answer="C"),        # ok
    qrow("001-1", "b", "long"),                    # duplicate id (of a short row)
    qrow("004-1", "broken", "medium"),             # unreadable media
]


@pytest.fixture
def parquet(tmp_path):
    path = tmp_path / "videomme" / "test-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def test_all_durations(parquet, media, tmp_path):
    out = tmp_path / "out"
    result = videomme.convert(parquet, out, media_dir=media)
    samples, rejects = check_outputs(result)
    assert (result.rows, result.accepted, result.rejected, result.skipped) == (6, 2, 4, 0)
    assert reasons_by_id(rejects) == {"001-2": "answer not among options", "002-1": "missing media",
                                      "001-1": "duplicate id", "004-1": "unreadable media"}
    assert [r["row"] for r in rejects] == [2, 3, 5, 6]
    dup = next(r for r in rejects if r["kind"] == "duplicate id")
    assert dup["reason"] == "id '001-1' already used by row 1"
    s = samples[0]
    assert (s.id, s.video, s.audio, s.split) == ("001-1", str(media / "a.mp4"), None, "test")
    assert (s.options, s.answer, s.question_type) == (["red", "green", "blue", "yellow"], "B", "Counting Problem")
    assert s.duration == 1.0 and s.media == {"has_audio": True, "fps": 8.0, "width": 56, "height": 56}
    assert s.extra == {"dataset": "videomme", "video_id": "001", "duration_class": "short",
                       "domain": "Knowledge", "sub_category": "Humanity & History"}
    assert samples[1].answer_text() == "C. blue"
    # idempotent: a second run gives the same bytes
    first = (result.manifest.read_bytes(), result.rejects.read_bytes())
    again = videomme.convert(parquet, out, media_dir=media)
    assert (again.manifest.read_bytes(), again.rejects.read_bytes()) == first
    assert again.summary() == result.summary() == (
        "videomme: 2 accepted, 4 rejected (answer not among options: 1, duplicate id: 1, "
        "missing media: 1, unreadable media: 1)")


def test_long_split(parquet, media, tmp_path):
    result = videomme.convert(parquet, tmp_path / "long", media_dir=media, duration="long")
    samples, rejects = check_outputs(result)
    # The short "001-1" is skipped, so the long row with that id is no duplicate here.
    assert [s.id for s in samples] == ["003-1", "001-1"]
    assert reasons_by_id(rejects) == {"002-1": "missing media"}
    assert (result.rows, result.skipped) == (3, 3)
    assert result.skip_reasons == {"duration medium, not long": 1, "duration short, not long": 2}
    assert result.rows + result.skipped == len(ROWS)
    assert all(s.extra["duration_class"] == "long" for s in samples)
    with pytest.raises(ConfigError, match="duration"):
        videomme.convert(parquet, tmp_path / "x", media_dir=media, duration="longest")


def test_nested_release_json_and_media_next_to_input(media, tmp_path):
    (tmp_path / "a.mp4").write_bytes((media / "a.mp4").read_bytes())
    video = {"video_id": "001", "duration": "short", "domain": "Sports", "sub_category": "Football",
             "videoID": "a"}
    questions = [
        {"question_id": "001-1", "task_type": "Action Recognition", "question": "Q1?", "options": OPTIONS,
         "answer": "A"},
        {"question_id": "001-2", "task_type": "OCR", "question": "Q2?", "options": "A. x B. y", "answer": "A"},
        {"question_id": "001-3", "task_type": "OCR", "options": OPTIONS, "answer": "A"},
    ]
    src = tmp_path / "videomme.json"
    src.write_text(json.dumps([{**video, "questions": questions}, {**video, "video_id": "002", "questions": []},
                               "not an object"]))
    result = videomme.convert(src, tmp_path / "out", split="val")  # media next to the input
    samples, rejects = check_outputs(result)
    assert [(s.id, s.split, s.question_type) for s in samples] == [("001-1", "val", "Action Recognition")]
    assert samples[0].video == str(tmp_path / "a.mp4")
    assert [(r["row"], r.get("item"), r["id"], r["kind"]) for r in rejects] == [
        (1, 2, "001-2", "bad options"), (1, 3, "001-3", "missing field"), (2, None, None, "missing field"),
        (3, None, None, "bad field")]
    assert "question" in rejects[1]["reason"]
