"""data_prep.testbed: real clips whose manifest events match the media, balanced 4-option questions."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_prep.testbed import (
    AUDIO_TOKENS_PER_S,
    COLOURS,
    DEPTHS,
    QUESTION_TYPES,
    TestbedSpec,
    generate_sample,
    generate_testbed,
    main,
    make_question,
    split_samples,
    tone_label,
)
from omnimem_train.config.schema import MediaConfig
from omnimem_train.data import read_manifest
from omnimem_train.errors import ConfigError
from omnimem_train.media.decode import iter_frames, load_audio, probe
from omnimem_train.media.features import audio_tokens_for_frames, smart_resize

SPEC = TestbedSpec(seconds=6.0)  # 280x280, 3 squares, 2 tones: one event slot of 6 left empty
SR = SPEC.sample_rate


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(path, ground truth) of one generated clip."""
    path = tmp_path_factory.mktemp("clip") / "a.mp4"
    return path, generate_sample(SPEC, 11, path)


def frames(path, spec=SPEC):
    return np.stack(list(iter_frames(path, spec.model_video_fps, spec.height, spec.width)))


def box_mean(frame, box, inset=4):
    x0, y0, x1, y1 = box
    return frame[y0 + inset : y1 - inset, x0 + inset : x1 - inset].reshape(-1, 3).astype(float).mean(0)


def mtimes(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_token_ratio_at_least_4_to_1():
    spec = TestbedSpec()
    # 280x280 at 2 fps: 10 x 10 tokens per 2-frame temporal patch, one patch per second.
    assert (spec.width, spec.height, spec.model_video_fps) == (280, 280, 2.0)
    assert spec.visual_tokens_per_s == 100.0 and spec.token_ratio == 4.0
    # Cross-check with the model-side code: frames are not resized, audio gives 25 tokens/s.
    h, w = smart_resize(spec.height, spec.width, 28, min_pixels=56 * 56, max_pixels=spec.model_max_pixels)
    assert (h, w) == (spec.height, spec.width)
    assert (h // 28) * (w // 28) * spec.model_video_fps / 2 == spec.visual_tokens_per_s
    assert audio_tokens_for_frames(100 * 16) / 16 == AUDIO_TOKENS_PER_S == 25
    # The default media.max_pixels (224x224) would shrink the frames to 64 tokens/s: too few, so
    # the testbed recipes must raise it; the spec refuses a design that the model would shrink.
    assert smart_resize(280, 280, 28, 3136, MediaConfig().max_pixels) == (224, 224)
    with pytest.raises(ValueError, match="model_max_pixels"):
        TestbedSpec(model_max_pixels=MediaConfig().max_pixels)
    with pytest.raises(ValueError, match="ratio 2.56"):
        TestbedSpec(width=224, height=224)
    assert TestbedSpec(width=224, height=224, fps=4, model_video_fps=4.0).token_ratio == 5.12


def test_spec_validation():
    for bad in (
        {"width": 250},  # not a multiple of 28
        {"n_visual_events": 4},  # 6 colours: a detail question needs 3 unseen ones
        {"n_visual_events": 1},  # order questions need two squares
        {"n_audio_events": 3},  # 5 tones: 3 unheard ones needed
        {"seconds": 3.0},  # 3 slots for 3 + 2 - 1 = 4 events
        {"colours": ("red", "pink")},
        {"tones": (250.0, 9000.0, 1000.0, 2000.0)},
        {"fps": 3},  # not a multiple of model_video_fps
    ):
        with pytest.raises(ValueError, match="TestbedSpec"):
            TestbedSpec(**bad)
    assert TestbedSpec(seconds=4.0).n_slots == 4


def test_clip_decodes_with_pyav(clip):
    path, _ = clip
    info = probe(path)
    assert (info.duration_s, info.has_video, info.has_audio) == (6.0, True, True)
    assert (info.fps, info.width, info.height) == (4.0, 280, 280)
    assert frames(path).shape == (12, 280, 280, 3)  # 2 fps
    assert abs(len(load_audio(path)) - 6 * SR) < 1024


def test_schedule(clip):
    _, truth = clip
    events = truth["events"]
    visual = [e for e in events if e["kind"] == "visual"]
    audio = [e for e in events if e["kind"] == "audio"]
    assert len(visual) == 3 and len(audio) == 2
    assert len({e["label"] for e in visual}) == 3 and len({e["label"] for e in audio}) == 2
    assert [e["start"] for e in events] == sorted(e["start"] for e in events)
    for group in (visual, audio):
        for a, b in zip(group, group[1:]):
            assert a["end"] <= b["start"]  # no overlap within a modality
    overlaps = [(a, v) for a in audio for v in visual if a["start"] < v["end"] and v["start"] < a["end"]]
    assert len(overlaps) == 1  # exactly one audio-visual co-occurrence
    for e in events:
        assert e["start"] == int(e["start"]) and 0 <= e["start"] < e["end"] <= SPEC.seconds


def test_visual_events_match_frames(clip):
    path, truth = clip
    video = frames(path)
    visual = [e for e in truth["events"] if e["kind"] == "visual"]
    for e in visual:
        colour = np.array(COLOURS[e["label"]], float)
        inside = [k for k in range(len(video)) if e["start"] <= k / 2 < e["end"]]
        outside = [k for k in range(len(video)) if not any(v["start"] <= k / 2 < v["end"] for v in visual)]
        assert inside == [2 * int(e["start"]), 2 * int(e["start"]) + 1]  # one temporal patch
        for k in inside:
            assert np.abs(box_mean(video[k], e["box"]) - colour).max() < 12, (e, k)
        for k in outside:
            assert np.abs(box_mean(video[k], e["box"]) - colour).max() > 60, (e, k)


def test_audio_events_match_energy(clip):
    path, truth = clip
    wave = load_audio(path)
    audio = [e for e in truth["events"] if e["kind"] == "audio"]
    quiet = np.ones(len(wave), bool)
    for e in audio:
        quiet[max(0, int(e["start"] * SR) - 800) : int(e["end"] * SR) + 800] = False
    quiet_rms = np.sqrt(np.mean(wave[quiet] ** 2))
    assert quiet_rms < 0.02
    for e in audio:
        seg = wave[int((e["start"] + 0.05) * SR) : int((e["end"] - 0.05) * SR)]
        assert np.sqrt(np.mean(seg**2)) > 20 * quiet_rms
        spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        peak = np.fft.rfftfreq(len(seg), 1 / SR)[spectrum.argmax()]
        assert abs(peak - e["freq"]) < 5 and e["label"] == tone_label(e["freq"])


def test_deterministic_by_seed(clip, tmp_path):
    path, truth = clip
    again = generate_sample(SPEC, 11, tmp_path / "b.mp4")
    assert again == truth
    assert np.array_equal(frames(tmp_path / "b.mp4"), frames(path))
    assert np.array_equal(load_audio(tmp_path / "b.mp4"), load_audio(path))
    other = generate_sample(SPEC, 12, tmp_path / "c.mp4")
    assert other["events"] != truth["events"]
    assert not np.array_equal(frames(tmp_path / "c.mp4"), frames(path))


def test_questions_balanced_and_correct(tmp_path):
    spec = TestbedSpec()
    samples = split_samples(tmp_path, spec, seed=0, split="train", num=40)
    letters = Counter(s.answer for s in samples)
    types = Counter(s.question_type for s in samples)
    assert set(letters) == set("ABCD") and all(abs(n - 10) <= 3 for n in letters.values())
    assert max(letters.values()) - min(letters.values()) <= 1
    assert set(types) == set(QUESTION_TYPES) and max(types.values()) - min(types.values()) <= 1
    odd = Counter(s.answer for s in split_samples(tmp_path, spec, seed=3, split="val", num=7))
    assert max(odd.values()) - min(odd.values()) <= 1 and sum(odd.values()) == 7
    for s in samples:
        assert len(s.options) == 4 == len(set(s.options))
        answer = s.options[s.answer_index]
        visual = [e for e in s.events if e["kind"] == "visual"]
        seen = [e["label"] for e in visual]
        heard = [e["label"] for e in s.events if e["kind"] == "audio"]
        wrong = [o for i, o in enumerate(s.options) if i != s.answer_index]
        if s.question_type == "visual_detail":
            assert answer in seen and not set(wrong) & set(seen)
        elif s.question_type == "audio_detail":
            assert answer in heard and not set(wrong) & set(heard)
            assert all(o.endswith(" Hz tone") for o in s.options)
        elif s.question_type == "audio_visual":
            # the tone is named by its frequency, the question's last word (answered on it, as a completion)
            last_word = s.question.removesuffix("?").split()[-1]
            tone = next(e for e in s.events if e["kind"] == "audio" and f"{e['freq']:g}" == last_word)
            shown = [v["label"] for v in visual if v["start"] < tone["end"] and tone["start"] < v["end"]]
            assert shown == [answer] and set(seen) <= set(s.options)  # the other squares are distractors
        else:
            assert s.question_type == "temporal_order"
            assert answer == (seen[0] if "first" in s.question else seen[-1])
            assert set(seen) <= set(s.options)
    assert {"first", "last"} <= {s.question.split()[-1].rstrip("?") for s in samples}
    assert len({tuple(s.options) for s in samples if s.question_type == "visual_detail"}) > 1


def test_each_question_ends_on_the_word_that_decides_it(tmp_path):
    """As a completion the answer is predicted on the question's last word: that word is one token
    of the testbed model's tokenizer and names what is asked (docs/testbed.md)."""
    from omnimem_train.models.builtin import build_tiny_model
    from omnimem_train.models.prompt import format_question

    _, tok = build_tiny_model("testbed-omni", num_layers=1)
    samples = split_samples(tmp_path, TestbedSpec(seconds=4.0, n_visual_events=2), 0, "train", 24)
    for s in samples:
        stem = format_question(s.question, s.options, "completion")
        word = stem.split()[-1]
        assert tok.decode(tok(stem, add_special_tokens=False)["input_ids"][-1:]) == " " + word, stem
        if s.question_type == "audio_visual":
            anchor = [a for a in s.events if a["kind"] == "audio" and any(
                v["kind"] == "visual" and v["start"] == a["start"] for v in s.events)]
            assert word == f"{anchor[0]['freq']:g}"
        else:
            assert word in {"visual_detail": {"show"}, "audio_detail": {"play"},
                            "temporal_order": {"first", "last"}}[s.question_type], stem


def test_several_questions_per_clip(tmp_path):
    spec = TestbedSpec(seconds=4.0)
    one = split_samples(tmp_path, spec, seed=0, split="train", num=6)
    four = split_samples(tmp_path, spec, seed=0, split="train", num=6, questions=4)
    assert len(four) == 24 and len({s.id for s in four}) == 24
    for i, clip in enumerate(one):
        rows = four[4 * i : 4 * i + 4]
        assert [s.id for s in rows] == [f"{clip.id}-q{j}" for j in range(4)]
        assert {s.video for s in rows} == {clip.video} and all(s.events == clip.events for s in rows)
        assert sorted(s.question_type for s in rows) == sorted(QUESTION_TYPES)  # every type once
        assert sorted(s.answer for s in rows) == list("ABCD")  # at four different letters
    two = split_samples(tmp_path, spec, seed=0, split="train", num=6, questions=2)
    assert [s.video for s in two] == [s.video for s in one for _ in range(2)]
    assert all(a.question_type != b.question_type for a, b in zip(two[::2], two[1::2]))
    with pytest.raises(ValueError, match="questions per clip"):
        split_samples(tmp_path, spec, seed=0, split="train", num=2, questions=5)
    # Only the training split takes several; the clips are the ones a one-question testbed writes.
    out = tmp_path / "tb"
    generate_testbed(out, 2, 0, 1, spec, seed=0)
    before = mtimes(out)
    generate_testbed(out, 2, 0, 1, spec, seed=0, train_questions=3)
    after = mtimes(out)
    assert all(after[k] == before[k] for k in before if k.suffix == ".mp4")  # reused, not re-rendered
    assert len(read_manifest(out / "manifest.jsonl", split="train", check_media=True)) == 6
    assert len(read_manifest(out / "manifest.jsonl", split="test")) == 1


def test_split_seeds_disjoint(tmp_path):
    spec = TestbedSpec(seconds=4.0)
    seeds = {
        (base, split): {s.extra["seed"] for s in split_samples(tmp_path, spec, base, split, 30)}
        for base in (0, 1)
        for split in ("train", "val", "test")
    }
    everything = [s for group in seeds.values() for s in group]
    assert len(everything) == len(set(everything)) == 6 * 30


def test_generate_testbed_layout_idempotent_resumes(tmp_path):
    spec = TestbedSpec(seconds=4.0)
    out = tmp_path / "tb"
    paths = generate_testbed(out, 3, 1, 1, spec, seed=0)
    assert paths == {split: out / split / "manifest.jsonl" for split in ("train", "val", "test")}
    assert len(read_manifest(out / "manifest.jsonl", check_media=True)) == 5
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        samples = read_manifest(out / "manifest.jsonl", split=split)
        assert [s.id for s in samples] == [s.id for s in read_manifest(paths[split], check_media=True)]
        assert len(samples) == n and all(s.split == split for s in samples)
        assert sorted(p.name for p in (out / split / "clips").iterdir()) == [
            f"{split}_{i:06d}.mp4" for i in range(n)
        ]
    s = read_manifest(paths["train"])[0]
    assert s.media == {"has_audio": True, "fps": 4.0, "width": 280, "height": 280} and s.duration == 4.0
    assert '"video": "clips/train_000000.mp4"' in paths["train"].read_text()

    before = mtimes(out)
    assert generate_testbed(out, 3, 1, 1, spec, seed=0) == paths and mtimes(out) == before
    # More training clips, same spec and seed: the finished clips are reused, one is added.
    generate_testbed(out, 4, 1, 1, spec, seed=0)
    after = mtimes(out)
    clips = [k for k in before if k.suffix == ".mp4"]
    assert all(after[k] == before[k] for k in clips) and len(read_manifest(paths["train"])) == 4
    # Another seed regenerates everything.
    generate_testbed(out, 2, 1, 1, spec, seed=1)
    new = mtimes(out)
    assert sorted(k.name for k in new if k.suffix == ".mp4") == [
        "test_000000.mp4",
        "train_000000.mp4",
        "train_000001.mp4",
        "val_000000.mp4",
    ]
    assert all(new[k] != after[k] for k in new if k.suffix == ".mp4")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.jsonl").write_text("")
    with pytest.raises(ConfigError, match="not written by data_prep.testbed"):
        generate_testbed(foreign, 1, 0, 0, spec)


def test_new_question_texts_rewrite_the_manifests_and_keep_the_clips(tmp_path, monkeypatch):
    """The question texts have their own version: a testbed written with older ones gets new
    manifests on the next run, its clips untouched."""
    from data_prep import testbed

    spec, out = TestbedSpec(seconds=4.0), tmp_path / "tb"
    monkeypatch.setattr(testbed, "_QUESTIONS_VERSION", 1)
    monkeypatch.setattr(testbed, "make_question", lambda *a: ("old?", *make_question(*a)[1:]))
    generate_testbed(out, 3, 0, 1, spec, seed=0)
    old = read_manifest(out / "manifest.jsonl")
    assert {s.question for s in old} == {"old?"}
    before = mtimes(out)
    monkeypatch.undo()
    generate_testbed(out, 3, 0, 1, spec, seed=0)
    after = mtimes(out)
    assert all(after[k] == before[k] for k in before if k.suffix == ".mp4")
    new = read_manifest(out / "manifest.jsonl")
    assert len(new) == 4 and "old?" not in {s.question for s in new}
    assert [(s.id, s.answer, s.options) for s in new] == [(s.id, s.answer, s.options) for s in old]


def test_cli(tmp_path, capsys):
    main([str(tmp_path / "tb"), "--train", "2", "--val", "1", "--test", "0", "--seconds", "4", "--train-questions", "2"])
    printed = capsys.readouterr().out
    assert "ratio 4:1" in printed and str(tmp_path / "tb" / "manifest.jsonl") in printed
    rows = read_manifest(tmp_path / "tb" / "manifest.jsonl", check_media=True)
    assert len(rows) == 5 and sum(s.split == "train" for s in rows) == 4  # 2 clips x 2 questions + 1 val
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--width", "250"])


def test_parallel_rendering_writes_the_same_files(tmp_path):
    """Two spawned rendering processes write byte-identical clips and manifests to one process."""
    spec = TestbedSpec(seconds=4.0)
    one, two = tmp_path / "one", tmp_path / "two"
    generate_testbed(one, 3, 0, 2, spec, seed=0, train_questions=2, workers=1)
    generate_testbed(two, 3, 0, 2, spec, seed=0, train_questions=2, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".mp4"]) == 5
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f


# The long-stream split (docs/testbed.md, "Long streams").

LONG = TestbedSpec(seconds=64.0, n_visual_events=2, n_audio_events=2, box_fraction=0.5)


def test_long_split_depths_are_balanced_with_types_and_hold_every_event():
    samples = split_samples("x", LONG, seed=0, split="test", num=300, depth_thirds=True)
    third = LONG.seconds / 3
    pairs = Counter((s.question_type, s.extra["depth"]) for s in samples)
    assert set(pairs) == {(t, d) for t in QUESTION_TYPES for d in DEPTHS}
    assert set(pairs.values()) == {25}  # 300 clips: 25 of each (type, third)
    for s in samples:
        lo = DEPTHS.index(s.extra["depth"]) * third
        # every event, so whatever the question asks about, lies inside the clip's third
        assert all(lo <= e["start"] and e["end"] <= lo + third for e in s.events), (s.extra, s.events)
    # and the events spread over the third, not bunched at its start
    starts = [e["start"] - DEPTHS.index(s.extra["depth"]) * third for s in samples for e in s.events]
    assert min(starts) < 2 and max(starts) > third - 3
    # the 12-clip blocks: every prefix of 12k clips is balanced too
    first = Counter(s.extra["depth"] for s in samples[:12])
    assert set(first.values()) == {4}


def test_long_split_clip_lengths_and_token_counts(tmp_path):
    # at least 8,000 audio+visual tokens at 280x280 and 2 fps, and at least 16 groups of the grid's 256
    tokens = LONG.seconds * (LONG.visual_tokens_per_s + AUDIO_TOKENS_PER_S)
    assert tokens >= 8000 and tokens / 256 >= 16
    paths = generate_testbed(tmp_path / "tb", 4, 0, 3, LONG, depth_thirds=True, train_seconds=[4, 16, 32, 64],
                             workers=1)
    test = read_manifest(paths["test"])
    train = read_manifest(paths["train"])
    assert [s.duration for s in test] == [64.0] * 3
    assert [s.duration for s in train] == [4.0, 16.0, 32.0, 64.0]
    assert all("depth" not in s.extra for s in train)  # training clips keep their events anywhere
    for s in test + train:
        info = probe(s.video)
        assert abs(info.duration_s - s.duration) < 0.3, (s.video, info.duration_s)
    # a rerun with the same arguments writes nothing; dropping the depth thirds re-renders the clips
    before = mtimes(tmp_path / "tb")
    generate_testbed(tmp_path / "tb", 4, 0, 3, LONG, depth_thirds=True, train_seconds=[4, 16, 32, 64], workers=1)
    assert mtimes(tmp_path / "tb") == before
    generate_testbed(tmp_path / "tb", 4, 0, 3, LONG, train_seconds=[4, 16, 32, 64], workers=1)
    after = read_manifest(tmp_path / "tb" / "test" / "manifest.jsonl")
    assert all("depth" not in s.extra for s in after)
    assert (tmp_path / "tb" / "test" / "clips" / "test_000000.mp4").stat().st_mtime_ns != \
        before[Path("test/clips/test_000000.mp4")]


def test_depth_thirds_need_room_for_the_events():
    with pytest.raises(ValueError, match="a third of 4.0 s holds 1 event slots"):
        split_samples("x", TestbedSpec(seconds=4.0, n_visual_events=2, n_audio_events=2), 0, "test", 3,
                      depth_thirds=True)
