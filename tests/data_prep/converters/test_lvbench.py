"""data_prep.converters.lvbench: video_info.meta.jsonl, one sample per qa item."""

from data_prep.converters import lvbench

from .conftest import check_outputs, write_jsonl

Q = "What colour is the square?\n(A) red\n(B) green\n(C) blue\n(D) yellow"


def qa(uid, answer="C", question=Q, **changes):
    return {"uid": uid, "question": question, "answer": answer,
            "question_type": ["key information retrieval", "entity recognition"],
            "time_reference": "00:00-00:01", **changes}


def test_lvbench(media, tmp_path):
    src = write_jsonl(
        tmp_path / "video_info.meta.jsonl",
        {"key": "a", "type": "cartoon", "qa": [qa(1), qa(2, answer="E")]},  # ok, bad answer
        '{"key": "b", "qa": [',                                            # bad JSON
        "",                                                                # blank (not a row)
        {"key": "missing", "type": "sports", "qa": [qa(3, answer="A")]},   # missing media
        {"key": "b", "type": "sports", "qa": [qa(1), qa("4", question="Where is it?", answer="A"),
                                              qa(5, question=Q + "\nAnswer with the letter.", answer="(D)")]},
        {"key": "b"},                                                      # no qa list
        ["not", "an", "object"],
    )
    result = lvbench.convert(src, tmp_path / "out", media_dir=media)
    samples, rejects = check_outputs(result)
    assert (result.rows, result.accepted, result.rejected) == (9, 2, 7)
    assert [(r["row"], r.get("item"), r["id"], r["kind"]) for r in rejects] == [
        (1, 2, "2", "answer not among options"),
        (2, None, None, "bad JSON"),
        (4, 1, "3", "missing media"),
        (5, 1, "1", "duplicate id"),
        (5, 2, "4", "bad options"),
        (6, None, "b", "missing field"),
        (7, None, None, "bad field"),
    ]
    a, b = samples
    assert (a.id, a.question, a.options, a.answer) == ("1", "What colour is the square?",
                                                        ["red", "green", "blue", "yellow"], "C")
    assert a.question_type == "key information retrieval|entity recognition" and a.split == "test"
    assert a.extra == {"dataset": "lvbench", "video_key": "a", "video_type": "cartoon",
                       "time_reference": "00:00-00:01"}
    assert (b.id, b.answer, b.video) == ("5", "D", str(media / "b.mp4"))
    assert b.extra["instruction"] == "Answer with the letter."
    first = (result.manifest.read_bytes(), result.rejects.read_bytes())
    again = lvbench.convert(src, tmp_path / "out", media_dir=media)
    assert (again.manifest.read_bytes(), again.rejects.read_bytes()) == first
