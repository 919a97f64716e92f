"""Generate a tiny, learnable multiple-choice QA set of real mp4 clips (CPU tests, the tiny recipe).

Each clip shows one coloured square (red, green, blue or yellow) for the whole clip over a plain
grey background, with an AAC mono tone; the question is "What colour is the square?" with the
four colours as options in a per-sample order. Answer letters and colours are balanced (counts
differ by at most one); everything derives from `seed`, so the same arguments give the same
manifest and the same decoded frames. Writes `<out>/clips/tiny_qa_*.mp4`, `<out>/manifest.jsonl`
(the normalized manifest, see omnimem_train.data.manifest) and `<out>/tiny_qa.json` (the arguments;
a second run with the same arguments reuses the files, other arguments regenerate them).

Run:
    python -m data_prep.tiny_qa OUT --num 8 --seconds 4
    python -m data_prep.tiny_qa OUT_VAL --num 8 --seconds 4 --seed 1 --split val
"""

from __future__ import annotations

import argparse
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from data_prep.synthetic import _AAC_FRAME, tone
from omnimem_train.data.manifest import SPLITS, Sample, write_manifest
from omnimem_train.errors import ConfigError
from omnimem_train.models.prompt import LETTERS
from omnimem_train.utils.atomic import atomic_write_text

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}
QUESTION = "What colour is the square?"
FPS = 8
SAMPLE_RATE = 16000
_VERSION = 1
_META = "tiny_qa.json"
_PREFIX = "tiny_qa_"


def _balanced(rng: np.random.Generator, num: int, k: int) -> list[int]:
    """`num` values in range(k), each block of k a random permutation: counts differ by <= 1."""
    blocks = [rng.permutation(k) for _ in range(-(-num // k))]
    return [int(v) for v in np.concatenate(blocks)[:num]]


def _write_clip(
    path: Path, seconds: float, size: int, colour, box, grey: int, tone_hz: float, seed: int
) -> None:
    """An H.264 + AAC mp4 like data_prep.synthetic.write_clip, showing a still coloured square."""
    img = np.full((size, size, 3), grey, dtype=np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = colour
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        vstream = container.add_stream("libx264", rate=Fraction(FPS))
        vstream.width, vstream.height, vstream.pix_fmt = size, size, "yuv420p"
        vstream.codec_context.options = {"preset": "ultrafast", "threads": "1"}  # reproducible bytes
        astream = container.add_stream("aac", rate=SAMPLE_RATE)
        astream.layout = "mono"
        for i in range(max(1, round(seconds * FPS))):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        wave = tone(seconds, SAMPLE_RATE, tone_hz, seed)
        for start in range(0, len(wave), _AAC_FRAME):
            aframe = av.AudioFrame.from_ndarray(
                wave[None, start : start + _AAC_FRAME], format="fltp", layout="mono"
            )
            aframe.sample_rate, aframe.pts = SAMPLE_RATE, start
            container.mux(astream.encode(aframe))
        container.mux(astream.encode(None))
    os.replace(tmp, path)


def _samples(
    out: Path, num: int, seconds: float, size: int, seed: int, split: str
) -> list[tuple[Sample, dict]]:
    """(sample, clip arguments) for every clip; all randomness drawn here, in a fixed order."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    letters = _balanced(rng, num, len(names))
    colours = _balanced(rng, num, len(names))
    side = size // 2
    out_list = []
    for k in range(num):
        answer = names[colours[k]]
        others = [names[i] for i in rng.permutation(len(names)) if names[i] != answer]
        options = others[: letters[k]] + [answer] + others[letters[k] :]
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
        box = [x0, y0, x0 + side, y0 + side]
        clip = {
            "colour": COLOURS[answer],
            "box": box,
            "grey": int(rng.integers(100, 141)),
            "tone_hz": float(rng.choice([330.0, 440.0, 550.0, 660.0])),
            "seed": seed * 1000 + k,
        }
        sample = Sample(
            id=f"tiny_qa-{seed}-{k:04d}",
            video=str(out / "clips" / f"{_PREFIX}{k:04d}.mp4"),
            duration=float(seconds),
            question=QUESTION,
            options=options,
            answer=LETTERS[letters[k]],
            question_type="colour",
            split=split,
            media={"has_audio": True, "fps": float(FPS), "width": size, "height": size},
            events=[{"start": 0.0, "end": float(seconds), "label": answer, "box": box}],
        )
        out_list.append((sample, clip))
    return out_list


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def make_tiny_qa(
    out_dir: str | Path,
    num: int = 8,
    seconds: float = 4.0,
    size: int = 56,
    seed: int = 0,
    split: str = "train",
) -> Path:
    """Write (or reuse) the tiny QA set in `out_dir`; returns the manifest path.

    Idempotent: when `out_dir/tiny_qa.json` records the same arguments and every file exists,
    nothing is written. Other arguments regenerate the clips and the manifest (stale clips of a
    previous run are removed). A manifest.jsonl not written by this generator is never touched
    (ConfigError).
    """
    if num < 1 or seconds <= 0 or size < 8 or size % 2 or split not in SPLITS:
        raise ValueError(
            f"need num >= 1, seconds > 0, an even size >= 8 and split in {SPLITS}, "
            f"got num={num}, seconds={seconds}, size={size}, split={split!r}"
        )
    out = Path(out_dir).absolute()
    manifest, meta_path = out / "manifest.jsonl", out / _META
    args = {"num": num, "seconds": float(seconds), "size": size, "seed": seed, "split": split, "fps": FPS}
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
    if manifest.exists() and not (isinstance(meta, dict) and meta.get("generator") == "tiny_qa"):
        raise ConfigError(f"{manifest}: exists and was not written by data_prep.tiny_qa; use another folder")

    samples = _samples(out, num, seconds, size, seed, split)
    if (
        isinstance(meta, dict)
        and meta.get("version") == _VERSION
        and meta.get("args") == args
        and meta.get("complete") is True
        and manifest.is_file()
        and all(Path(s.video).is_file() for s, _ in samples)
    ):
        return manifest

    out.mkdir(parents=True, exist_ok=True)
    _write_json(meta_path, {"generator": "tiny_qa", "version": _VERSION, "args": args, "complete": False})
    (out / "clips").mkdir(exist_ok=True)
    keep = set()
    for sample, clip in samples:
        path = Path(sample.video)
        keep.add(path.name)
        _write_clip(path, seconds, size, **clip)
    for stale in (out / "clips").glob(f"{_PREFIX}*.mp4"):
        if stale.name not in keep:
            stale.unlink()
    write_manifest(manifest, [s for s, _ in samples])
    _write_json(meta_path, {"generator": "tiny_qa", "version": _VERSION, "args": args, "complete": True})
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (clips/, manifest.jsonl, tiny_qa.json)")
    parser.add_argument("--num", type=int, default=8, help="number of clips/questions")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--size", type=int, default=56, help="frame width = height (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=SPLITS)
    args = parser.parse_args(argv)
    try:
        path = make_tiny_qa(args.out, args.num, args.seconds, args.size, args.seed, args.split)
    except ValueError as e:
        parser.error(str(e))
    print(path)


if __name__ == "__main__":
    main()
