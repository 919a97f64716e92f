"""data_prep.converters.lvomnibench: a JSON array with list or dict options and optional audio."""

import json

import pytest

from data_prep.converters import lvomnibench
from omnimem_train.errors import ConfigError

from .conftest import check_outputs, reasons_by_id


def item(id_, video="a.mp4", **changes):
    d = {"id": id_, "video": video, "question": "What is heard?", "options": ["a tone", "speech", "music"],
         "answer": "A", "task": "audio recognition"}
    d.update(changes)
    return {k: v for k, v in d.items() if v is not ...}


def test_lvomnibench(media, tmp_path):
    rows = [
        item("o1", audio="speech.wav"),
        item(2, video="silent.mp4", options={"B": "y", "A": "x"}, answer="B", task=..., category="visual"),
        item("o3", video="silent.mp4", audio="silent.mp4"),    # the audio file has no audio stream
        item("o4", video="speech.wav"),                        # the video file has no video stream
        item("o5", options={"A": "x", "C": "y"}),              # a gap in the option letters
        item("o6", question=...),                              # missing field
        item("o7", answer="D"),                                # answer not among options
        item("o8", video="broken.mp4"),                        # unreadable
        "not an object",
    ]
    src = tmp_path / "lvomnibench.json"
    src.write_text(json.dumps(rows))
    result = lvomnibench.convert(src, tmp_path / "out", media_dir=media)
    samples, rejects = check_outputs(result)
    assert (result.rows, result.accepted, result.rejected) == (9, 2, 7)
    assert reasons_by_id(rejects) == {"o3": "no audio stream", "o4": "no video stream", "o5": "bad options",
                                      "o6": "missing field", "o7": "answer not among options",
                                      "o8": "unreadable media", None: "bad field"}
    o1, o2 = samples
    assert (o1.id, o1.audio, o1.options, o1.question_type) == ("o1", str(media / "speech.wav"),
                                                                ["a tone", "speech", "music"], "audio recognition")
    assert o1.media["has_audio"] is True and o1.duration == 1.0
    assert (o2.id, o2.options, o2.answer, o2.question_type) == ("2", ["x", "y"], "B", "visual")
    assert o2.media == {"has_audio": False, "fps": 8.0, "width": 56, "height": 56}
    assert o2.extra == {"dataset": "lvomnibench", "category": "visual"}
    first = (result.manifest.read_bytes(), result.rejects.read_bytes())
    again = lvomnibench.convert(src, tmp_path / "out", media_dir=media)
    assert (again.manifest.read_bytes(), again.rejects.read_bytes()) == first


def test_unparsable_file(tmp_path):
    src = tmp_path / "lvomnibench.json"
    src.write_text('[{"id": "o1", ')
    with pytest.raises(ConfigError, match="invalid JSON"):
        lvomnibench.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
