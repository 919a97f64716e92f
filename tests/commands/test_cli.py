"""`omnimem-train infer` end to end on real generated media, and its bad-input errors."""

import json

import av
import pytest

from data_prep.synthetic import write_clip, write_wav
from omnimem_train.commands.cli import main


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=5.0, width=112, height=112, fps=8))


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_infer_answers_and_reports_memory(clip, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = _run(["infer", "--video", clip, "--question", "What colour?", "--budget", "40",
                           "--scorer", "recency", "memory.sink_tokens=0", "--group-size", "64", f"output_dir={run}",
                           "generation.max_new_tokens=4"], capsys)
    assert code == 0, err
    assert "Q: What colour?" in out and "A:" in out
    line = next(s for s in out.splitlines() if s.startswith("memory:"))
    assert "visual" in line and "audio" in line and "KV" in line
    result = json.loads((run / "infer_result.json").read_text())
    for layer in result["memory"]["layers"]:
        assert layer["visual"] + layer["audio"] == 40
    assert (run / "config.yaml").exists()
    assert "memory.budget" not in (run / "config.yaml").read_text()  # saved as a nested, resolved config
    assert "budget: 40" in (run / "config.yaml").read_text()


def test_infer_budget_fraction_is_the_streams_own_fraction(clip, tmp_path, capsys):
    """--budget-fraction replaces the recipe's budget (memory.budget 256) by f x the stream's exact
    audio+visual tokens (text, always kept, is what the report holds beyond them)."""
    code, out, err = _run(["infer", "recipes/infer/tiny_omni.yaml", "--video", clip, "--budget-fraction", "0.125",
                           "--scorer", "recency", "memory.sink_tokens=0", "memory.modality_aware=false",
                           f"output_dir={tmp_path}", "generation.max_new_tokens=2"], capsys)
    assert code == 0, err
    memory = json.loads((tmp_path / "infer_result.json").read_text())["memory"]
    media_seen = memory["tokens_seen"] - memory["layers"][0]["text"]
    want = int(0.125 * media_seen + 0.5)
    assert want < media_seen and all(layer["visual"] + layer["audio"] == want for layer in memory["layers"])
    code, _, err = _run(["infer", "recipes/infer/tiny_omni.yaml", "--video", clip, "--budget", "8",
                         "--budget-fraction", "0.1"], capsys)
    assert code == 2 and err.strip() == "error: --budget and --budget-fraction: give one budget size, not both"


def test_infer_scores_options_with_recipe(clip, tmp_path, capsys):
    code, out, err = _run(["infer", "recipes/infer/tiny_omni.yaml", "--video", clip, "--options", "red", "green",
                           "blue", "yellow", f"output_dir={tmp_path}"], capsys)
    assert code == 0, err
    answer = next(s for s in out.splitlines() if s.startswith("A: "))
    assert answer[3] in "ABCD" and "log-likelihood" in answer
    scores = json.loads((tmp_path / "infer_result.json").read_text())["option_scores"]
    assert len(scores) == 4 and all(s < 0 for s in scores)


def test_infer_audio_only_and_separate_audio(clip, tmp_path, capsys):
    wav = str(write_wav(tmp_path / "a.wav", seconds=3.0))
    code, out, err = _run(["infer", "--audio", wav, f"output_dir={tmp_path}", "generation.max_new_tokens=2"], capsys)
    assert code == 0, err
    layer = json.loads((tmp_path / "infer_result.json").read_text())["memory"]["layers"][0]
    assert layer["visual"] == 0 and layer["audio"] == 75  # 3 s at 25 audio tokens/s
    code, out, err = _run(["infer", "--video", clip, "--audio", wav, f"output_dir={tmp_path}",
                           "generation.max_new_tokens=2"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "infer_result.json").read_text())["memory"]["layers"][0]["audio"] == 75


def test_infer_text_lm_with_context(tmp_path, capsys):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("text: [0s]\nvisual: a red square\naudio: a tone\nthe square turns green\n")
    code, out, err = _run(["infer", "--model", "builtin:tiny-llama", "--context", str(ctx), "--budget", "3",
                           "--scorer", "omnimem", f"output_dir={tmp_path}", "generation.max_new_tokens=2"], capsys)
    assert code == 0, err
    layer = json.loads((tmp_path / "infer_result.json").read_text())["memory"]["layers"][0]
    assert layer["visual"] + layer["audio"] == 3


def _silent_video(path):
    write_clip(path, seconds=2.0, audio=False)
    return str(path)


def _zero_frame_video(path):
    """A well-formed mp4 whose video stream has no frames."""
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=8)
    s.width = s.height = 64
    s.pix_fmt = "yuv420p"
    c.start_encoding()
    for packet in s.encode(None):
        c.mux(packet)
    c.close()
    assert path.stat().st_size > 0
    return str(path)


def _not_a_video(path):
    path.write_text("this is not a video\n")
    return str(path)


@pytest.mark.parametrize(
    "make,extra,needle",
    [
        (lambda p: str(p / "missing.mp4"), [], "file not found"),
        (lambda p: _not_a_video(p / "fake.mp4"), [], "cannot be decoded"),
        (lambda p: _silent_video(p / "silent.mp4"), ["media.audio=required"], "no audio track"),
        (lambda p: _zero_frame_video(p / "empty.mp4"), [], "zero-length"),
    ],
    ids=["missing", "not-a-video", "no-audio-required", "zero-length"],
)
def test_bad_media_is_one_line_error(tmp_path, capsys, make, extra, needle):
    path = make(tmp_path)
    code, out, err = _run(["infer", "--video", path, f"output_dir={tmp_path / 'run'}", *extra], capsys)
    assert code == 2
    lines = [s for s in err.splitlines() if s.startswith("error:")]
    assert len(lines) == 1 and path in lines[0] and needle in lines[0]
    assert "Traceback" not in err


def test_video_without_audio_falls_back_when_not_required(tmp_path, capsys):
    path = _silent_video(tmp_path / "silent.mp4")
    code, out, err = _run(["infer", "--video", path, f"output_dir={tmp_path}", "generation.max_new_tokens=2"], capsys)
    assert code == 0, err
    assert "no audio track" in err and "video-only" in err
    assert json.loads((tmp_path / "infer_result.json").read_text())["memory"]["layers"][0]["audio"] == 0


def test_missing_model_dir_is_one_line_error(clip, tmp_path, capsys):
    missing = str(tmp_path / "no_such_model")
    code, out, err = _run(["infer", "--model", missing, "--video", clip], capsys)
    assert code == 2 and err.strip() == f"error: {missing}: model directory not found"


def test_bad_config_key_and_policy(clip, capsys):
    code, _, err = _run(["infer", "--video", clip, "memory.scorr=recency"], capsys)
    assert code == 2 and "memory.scorr" in err and "Traceback" not in err
    code, _, err = _run(["infer", "--video", clip, "--scorer", "nope"], capsys)
    assert code == 2 and "nope" in err and "omnimem" in err and "full" in err and "frame_drop" in err


def test_infer_serves_a_model_with_its_memory_settings(clip, tmp_path, capsys):
    import shutil

    from omnimem_train.models.builtin import resolve_builtin

    model = shutil.copytree(resolve_builtin("tiny-omni")[0], tmp_path / "model")
    (model / "omnimem_memory.json").write_text(json.dumps(
        {"compression": "streaming", "scorer": "recency", "budget": 30, "sink_tokens": 0, "group_size": 64}))
    run = tmp_path / "run"
    code, out, err = _run(["infer", "--model", str(model), "--video", clip, f"output_dir={run}",
                           "generation.max_new_tokens=2"], capsys)
    assert code == 0, err
    note = next(s for s in err.splitlines() if "omnimem_memory.json" in s)
    assert "scorer=recency" in note and "budget=30" in note
    layers = json.loads((run / "infer_result.json").read_text())["memory"]["layers"]
    assert all(layer["visual"] + layer["audio"] == 30 for layer in layers)
    code, out, err = _run(["infer", "--model", str(model), "--video", clip, "--budget", "20", f"output_dir={run}",
                           "generation.max_new_tokens=2"], capsys)  # the command line wins
    assert code == 0, err
    layers = json.loads((run / "infer_result.json").read_text())["memory"]["layers"]
    assert all(layer["visual"] + layer["audio"] == 20 for layer in layers)
    assert "group_size: 64" in (run / "config.yaml").read_text()
