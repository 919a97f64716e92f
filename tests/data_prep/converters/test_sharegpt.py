"""data_prep.converters.sharegpt: LLaMA-Factory audio-visual `messages` / `conversations` rows."""

from data_prep.converters import sharegpt

from .conftest import check_outputs, write_jsonl

MC = "<video><audio>What colour is the square?\nA. red\nB. green\nC. blue\nD. yellow\nAnswer with the option's letter."


def msgs(user, answer, **kw):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **kw}


def test_sharegpt(media, tmp_path):
    src = write_jsonl(
        tmp_path / "train.jsonl",
        msgs(MC, "B. green", videos=["a.mp4"], audios=["speech.wav"]),                          # 1 MC
        {"conversations": [{"from": "system", "value": "Be brief."},
                           {"from": "human", "value": "<video>Describe the clip."},
                           {"from": "gpt", "value": "A square moves."}], "videos": "b.mp4"},  # 2 open
        '{"messages": [}',                                                                      # 3 bad JSON
        msgs(MC, "E", videos=["a.mp4"], audios=["speech.wav"]),                                 # 4 bad answer
        msgs("<video>What?", "x", videos=["a.mp4"], audios=["speech.wav"]),                     # 5 no <audio>
        {"messages": [{"role": "user", "content": "<video>Q1"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "b"}],
         "videos": ["a.mp4"]},                                                                  # 6 multi-turn
        msgs("<audio>What is heard?", "A tone.", audios=["speech.wav"]),                        # 7 audio only
        msgs("<video>What?", "x", videos=["missing.mp4"]),                                      # 8 missing
        msgs("<video>Q?", "y", videos=["b.mp4"], id="dup"),                                     # 9 explicit id
        msgs("<video>Q?", "z", videos=["b.mp4"], id="dup"),                                     # 10 duplicate
        msgs("<video><image>Q?", "z", videos=["b.mp4"], images=["x.png"]),                      # 11 image
    )
    result = sharegpt.convert(src, tmp_path / "out", media_dir=media)
    samples, rejects = check_outputs(result)
    assert (result.rows, result.accepted, result.rejected) == (11, 4, 7)
    assert [(r["row"], r["id"], r["kind"]) for r in rejects] == [
        (3, None, "bad JSON"), (4, "train-4", "answer not among options"), (5, "train-5", "bad field"),
        (6, "train-6", "unsupported"), (8, "train-8", "missing media"), (10, "dup", "duplicate id"),
        (11, "train-11", "unsupported")]
    assert rejects[2]["reason"] == "0 <audio> placeholder(s) but 1 audio file(s)"
    mc, open_, audio_only, dup = samples
    assert (mc.id, mc.question, mc.options, mc.answer) == ("train-1", "What colour is the square?",
                                                           ["red", "green", "blue", "yellow"], "B")
    assert (mc.video, mc.audio, mc.split, mc.question_type) == (str(media / "a.mp4"), str(media / "speech.wav"),
                                                                "train", "multiple_choice")
    assert mc.extra == {"dataset": "sharegpt", "instruction": "Answer with the option's letter.",
                        "response": "B. green"}
    assert (open_.question, open_.options, open_.answer, open_.question_type) == (
        "Describe the clip.", [], "A square moves.", "open_ended")
    assert open_.extra == {"dataset": "sharegpt", "system": "Be brief."}
    assert (audio_only.video, audio_only.audio, audio_only.media) == (
        None, str(media / "speech.wav"), {"has_audio": True, "fps": None, "width": None, "height": None})
    assert (dup.id, dup.answer) == ("dup", "y")
    first = (result.manifest.read_bytes(), result.rejects.read_bytes())
    again = sharegpt.convert(src, tmp_path / "out", media_dir=media)
    assert (again.manifest.read_bytes(), again.rejects.read_bytes()) == first
    val = sharegpt.convert(src, tmp_path / "val", media_dir=media, split="val")
    assert {s.split for s in check_outputs(val)[0]} == {"val"}
