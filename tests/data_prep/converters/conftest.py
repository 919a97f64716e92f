"""Shared fixtures: a folder of tiny real media files (1-s 56x56 clips, a wav, a broken file)."""

import json

import pytest

from data_prep.synthetic import write_clip, write_wav
from omnimem_train.data import read_manifest, to_dataset


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """a.mp4 / b.mp4 (video + audio), silent.mp4 (video only), speech.wav, broken.mp4 (not media)."""
    d = tmp_path_factory.mktemp("media")
    write_clip(d / "a.mp4", seconds=1, width=56, height=56, seed=0)
    write_clip(d / "b.mp4", seconds=1, width=56, height=56, seed=1)
    write_clip(d / "silent.mp4", seconds=1, width=56, height=56, audio=False, seed=2)
    write_wav(d / "speech.wav", seconds=1)
    (d / "broken.mp4").write_bytes(b"this is not an mp4 file" * 10)
    return d


def write_jsonl(path, *rows):
    """One line per row: dicts/lists as JSON, strings as they are (for malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rejects_of(result):
    """The rejects file as a list of dicts."""
    return [json.loads(line) for line in result.rejects.read_text().splitlines()]


def check_outputs(result):
    """Every row accounted for; the manifest reads back (media checked) and loads as a Dataset."""
    samples = read_manifest(result.manifest, check_media=True)
    rejects = rejects_of(result)
    assert result.accepted == len(samples) and result.rejected == len(rejects)
    assert result.accepted + result.rejected == result.rows
    assert sum(result.reasons.values()) == result.rejected
    assert all(r["reason"] and "\n" not in r["reason"] for r in rejects)
    ds = to_dataset(samples)
    assert ds.num_rows == len(samples) and list(ds["id"]) == [s.id for s in samples]
    return samples, rejects


def reasons_by_id(rejects):
    return {r["id"]: r["kind"] for r in rejects}
