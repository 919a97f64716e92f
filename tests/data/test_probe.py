"""omnimem_train.data.probe: every sample's media checked before a model loads; stop on the first
bad one naming its manifest line, or skip and report."""

import json

import pytest

from omnimem_train.data import SKIPPED, probe_samples, read_manifest
from omnimem_train.errors import MediaError
from tests.data.test_manifest import line, write_lines


def _check(bad):
    """A stand-in for media.decode.check_sources: the paths in `bad` fail, naming their field."""

    def check(video, audio):
        for field, path in (("video", video), ("audio", audio)):
            if path in bad:
                raise MediaError(f"{field}: {path}: {bad[path]}")

    return check


@pytest.fixture
def manifest(tmp_path):
    return write_lines(tmp_path / "manifest.jsonl", line(id="a", video="clips/a.mp4"), "",
                       line(id="b", video="clips/b.mp4", audio="sounds/b.wav"), line(id="c", video="clips/c.mp4"))


def test_the_first_bad_sample_stops_with_its_line_and_field(manifest, tmp_path):
    samples = read_manifest(manifest)
    bad = {str(tmp_path / "sounds" / "b.wav"): "cannot be decoded as media (Invalid data)",
           str(tmp_path / "clips" / "c.mp4"): "cannot decode the last second of its video stream"}
    with pytest.raises(MediaError) as excinfo:
        probe_samples(samples, manifest, _check(bad), "error", tmp_path / "run")
    assert str(excinfo.value) == (f"{manifest}:3: audio: {tmp_path / 'sounds' / 'b.wav'}: "
                                  "cannot be decoded as media (Invalid data)")
    assert not (tmp_path / "run").exists()
    assert probe_samples(samples, manifest, _check({}), "error", tmp_path / "run") == samples


def test_skip_drops_bad_samples_and_lists_them(manifest, tmp_path, capsys):
    samples = read_manifest(manifest)
    clip = str(tmp_path / "clips" / "a.mp4")
    kept = probe_samples(samples, manifest, _check({clip: "no decodable frames"}), "skip", tmp_path / "run")
    assert [s.id for s in kept] == ["b", "c"]
    skipped = tmp_path / "run" / SKIPPED
    assert [json.loads(x) for x in skipped.read_text().splitlines()] == [
        {"line": 1, "id": "a", "reason": f"video: {clip}: no decodable frames"}]
    assert capsys.readouterr().err.strip() == f"skipped 1 of 3 samples with unreadable media: see {skipped}"
    # A later run with nothing to skip leaves no stale list behind.
    assert probe_samples(samples, manifest, _check({}), "skip", tmp_path / "run") == samples
    assert not skipped.exists()


def test_skipping_every_sample_is_an_error(manifest, tmp_path):
    samples = read_manifest(manifest)
    bad = {str(tmp_path / "clips" / f"{k}.mp4"): "cannot be decoded as media" for k in "abc"}
    with pytest.raises(MediaError, match=rf"^{manifest}: every sample has unreadable media \(3 skipped: see "):
        probe_samples(samples, manifest, _check(bad), "skip", tmp_path / "run")
    assert len((tmp_path / "run" / SKIPPED).read_text().splitlines()) == 3
