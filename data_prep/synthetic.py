"""Write small, deterministic, *real* media files for tests and demos (PyAV only, no ffmpeg CLI).

The clip is an H.264 (yuv420p) video of a colored square moving over a gradient, with an AAC mono
track (a sine tone plus low noise). Everything is derived from `seed`, so the same arguments give
the same decoded frames and samples.

Run:
    python -m data_prep.synthetic out.mp4 --seconds 8             # video + audio
    python -m data_prep.synthetic out.mp4 --seconds 8 --no-audio  # video only
    python -m data_prep.synthetic out.wav --seconds 65            # a wav file (by extension)
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

# AAC encodes 1024 samples per frame; feeding whole frames keeps pts bookkeeping trivial.
_AAC_FRAME = 1024


def tone(seconds: float, sample_rate: int = 16000, tone_hz: float = 440.0, seed: int = 0) -> np.ndarray:
    """A sine tone plus low Gaussian noise: float32 (round(seconds * sample_rate),), peak < 0.5."""
    n = round(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    noise = np.random.default_rng(seed).normal(0.0, 0.01, n)
    return (0.3 * np.sin(2 * np.pi * tone_hz * t) + noise).astype(np.float32)


def frame_rgb(index: int, width: int, height: int, fps: float, seed: int) -> np.ndarray:
    """Frame `index` of the moving-square animation: uint8 (height, width, 3)."""
    rng = np.random.default_rng(seed)
    color = rng.integers(64, 256, 3, dtype=np.uint8)
    velocity = rng.uniform(0.2, 0.6, 2)  # fraction of the free range crossed per second (x, y)
    side = max(2, min(width, height) // 4)

    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (xx * 255 // max(width - 1, 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(height - 1, 1)).astype(np.uint8)
    img[..., 2] = (seed * 37) % 256

    # Bounce (triangle wave) so the square stays inside the frame for any clip length.
    t = index / fps
    phase = (t * velocity) % 2.0
    pos = np.where(phase < 1.0, phase, 2.0 - phase)
    x0 = int(pos[0] * (width - side))
    y0 = int(pos[1] * (height - side))
    img[y0 : y0 + side, x0 : x0 + side] = color
    return img


def write_clip(
    path: str | Path,
    seconds: float,
    width: int = 112,
    height: int = 112,
    fps: int = 8,
    audio: bool = True,
    sample_rate: int = 16000,
    tone_hz: float = 440.0,
    seed: int = 0,
) -> Path:
    """Write an mp4 of `seconds` s: round(seconds * fps) H.264 frames, plus an AAC mono track if `audio`.

    The audio track holds round(seconds * sample_rate) samples; after decoding, its length matches
    that to within one AAC frame (the encoder pads the last frame). Returns the path.
    """
    if seconds <= 0 or width % 2 or height % 2:
        raise ValueError(
            f"need seconds > 0 and even width/height for yuv420p, got {seconds}, {width}x{height}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        # One thread: the encoded bytes are then reproducible, not only the decoded pixels.
        vstream.codec_context.options = {"preset": "ultrafast", "threads": "1"}
        astream = None
        if audio:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"

        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(frame_rgb(i, width, height, fps, seed), format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))

        if astream is not None:
            wave = tone(seconds, sample_rate, tone_hz, seed)
            for start in range(0, len(wave), _AAC_FRAME):
                chunk = wave[start : start + _AAC_FRAME]
                aframe = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                aframe.sample_rate, aframe.pts = sample_rate, start
                container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return path


def write_wav(
    path: str | Path, seconds: float, sample_rate: int = 16000, tone_hz: float = 440.0, seed: int = 0
) -> Path:
    """Write a mono 16-bit wav of exactly round(seconds * sample_rate) samples. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, sample_rate, tone_hz, seed), sample_rate, subtype="PCM_16")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output path; .wav writes audio only, anything else an mp4 clip")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--width", type=int, default=112)
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--no-audio", action="store_true", help="write a video-only mp4")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.lower().endswith(".wav"):
        out = write_wav(args.out, args.seconds, args.sample_rate, seed=args.seed)
    else:
        out = write_clip(
            args.out,
            args.seconds,
            args.width,
            args.height,
            args.fps,
            audio=not args.no_audio,
            sample_rate=args.sample_rate,
            seed=args.seed,
        )
    print(out)


if __name__ == "__main__":
    main()
