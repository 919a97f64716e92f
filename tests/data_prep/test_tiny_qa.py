"""data_prep.tiny_qa: a tiny, deterministic, learnable QA set of real clips + manifest."""

from collections import Counter

import numpy as np
import pytest

from data_prep.tiny_qa import COLOURS, main, make_tiny_qa
from omnimem_train.data import read_manifest
from omnimem_train.errors import ConfigError
from omnimem_train.media.decode import iter_frames, probe

SIZE = 56


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """8 clips of 1 s (seed 0) in a fresh folder: the manifest path."""
    return make_tiny_qa(tmp_path_factory.mktemp("tiny") / "qa", num=8, seconds=1.0, size=SIZE, seed=0)


def first_frame(path):
    return next(iter_frames(path, fps=1.0, height=SIZE, width=SIZE))


def mtimes(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_manifest(tiny):
    samples = read_manifest(tiny, check_media=True)
    assert tiny.name == "manifest.jsonl" and len(samples) == 8
    assert sorted(p.name for p in (tiny.parent / "clips").iterdir()) == [
        f"tiny_qa_{k:04d}.mp4" for k in range(8)
    ]
    for s in samples:
        assert s.split == "train" and s.question == "What colour is the square?"
        assert sorted(s.options) == sorted(COLOURS) and s.answer in "ABCD"
        assert s.answer_text() == f"{s.answer}. {s.events[0]['label']}"
        info = probe(s.video)
        assert (info.duration_s, info.has_audio, info.width, info.fps) == (1.0, True, SIZE, 8.0)
        assert s.duration == 1.0 and s.media == {"has_audio": True, "fps": 8.0, "width": SIZE, "height": SIZE}
    # Relative paths in the file, so the folder can be moved.
    assert '"video": "clips/tiny_qa_0000.mp4"' in tiny.read_text()


def test_answers_and_colours_balanced(tiny, tmp_path):
    samples = read_manifest(tiny)
    assert Counter(s.answer for s in samples) == dict.fromkeys("ABCD", 2)
    assert Counter(s.options[s.answer_index] for s in samples) == dict.fromkeys(COLOURS, 2)
    assert len({tuple(s.options) for s in samples}) > 1  # option order varies
    odd = read_manifest(make_tiny_qa(tmp_path, num=6, seconds=0.25, seed=3))
    counts = Counter(s.answer for s in odd)
    assert max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == 6


def test_square_colour_is_the_answer(tiny):
    palette = np.array(list(COLOURS.values()), dtype=float)
    for s in read_manifest(tiny):
        frame = first_frame(s.video).astype(float)
        saturated = frame.max(-1) - frame.min(-1) > 60  # the square; the background is grey
        assert saturated.mean() > 0.15
        mean = frame[saturated].mean(0)
        nearest = list(COLOURS)[int(np.argmin(((palette - mean) ** 2).sum(1)))]
        assert nearest == s.options[s.answer_index], (s.id, mean)


def test_deterministic_by_seed(tiny, tmp_path):
    again = make_tiny_qa(tmp_path / "a", num=8, seconds=1.0, size=SIZE, seed=0)
    assert again.read_bytes() == tiny.read_bytes()
    a, b = read_manifest(tiny)[0], read_manifest(again)[0]
    assert np.array_equal(first_frame(a.video), first_frame(b.video))
    other = make_tiny_qa(tmp_path / "b", num=8, seconds=1.0, size=SIZE, seed=1)
    assert other.read_bytes() != tiny.read_bytes()


def test_idempotent_and_regenerates_on_other_args(tmp_path):
    out = tmp_path / "qa"
    manifest = make_tiny_qa(out, num=4, seconds=0.5, seed=2)
    before = mtimes(out)
    assert make_tiny_qa(out, num=4, seconds=0.5, seed=2) == manifest
    assert mtimes(out) == before  # nothing rewritten

    make_tiny_qa(out, num=2, seconds=0.5, seed=2, split="val")
    samples = read_manifest(manifest, check_media=True)
    assert [s.split for s in samples] == ["val", "val"]
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["tiny_qa_0000.mp4", "tiny_qa_0001.mp4"]

    # A lost clip is regenerated even with the same arguments.
    (out / "clips" / "tiny_qa_0001.mp4").unlink()
    make_tiny_qa(out, num=2, seconds=0.5, seed=2, split="val")
    assert len(read_manifest(manifest, check_media=True)) == 2


def test_foreign_manifest_is_not_overwritten(tmp_path):
    foreign = tmp_path / "manifest.jsonl"
    foreign.write_text("{}\n")
    with pytest.raises(ConfigError, match="not written by data_prep.tiny_qa"):
        make_tiny_qa(tmp_path, num=1, seconds=0.25)
    assert foreign.read_text() == "{}\n"


def test_bad_arguments():
    with pytest.raises(ValueError, match="even size"):
        make_tiny_qa("unused", size=55)
    with pytest.raises(ValueError, match="split"):
        make_tiny_qa("unused", split="dev")


def test_cli(tmp_path, capsys):
    main([str(tmp_path / "cli"), "--num", "2", "--seconds", "0.5", "--seed", "4"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "manifest.jsonl")
    assert len(read_manifest(tmp_path / "cli" / "manifest.jsonl")) == 2
