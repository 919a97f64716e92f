"""Generate the long-video testbed: real mp4 clips (H.264 + AAC) with rare audio/visual events and
4-option multiple-choice questions, in train/val/test splits with disjoint seeds.

What makes the paper's problem real here:

- Visual redundancy: a static per-sample background (a two-colour gradient of muted colours that
  drifts very slowly), with rare short visual events: a saturated coloured square for
  `visual_event_seconds` (default 1 s) at a random place.
- Audio: low-level noise (near silence) with rare short tones (`audio_event_seconds`, default 1 s)
  from a few widely spaced frequencies (default 5, an octave apart: 250 Hz ... 4 kHz), loud
  (amplitude 0.5) with 10-ms ramps, so that a small audio tower can tell them apart.
- Token ratio: the model samples frames at `model_video_fps` (2) and Qwen2.5-Omni makes one
  visual token per 28x28 pixels per 2-frame temporal patch, so visual tokens/s =
  (height/28) * (width/28) * model_video_fps / 2 = 10 * 10 * 1 = 100 for 280x280 at 2 fps; audio
  is 25 tokens/s (100 mel frames/s, /4 by the audio tower), hence 4:1. `TestbedSpec` checks the
  ratio (`min_token_ratio`). The training config must keep those frames unshrunk:
  media.video_fps = 2 and media.max_pixels >= width * height (78400 for 280x280; the default
  50176 = 224x224 would resize to 8x8 tokens per grid, 64 tokens/s, 2.56:1).
- Events start on whole seconds (a grid of `ceil(max(event seconds))`-s slots), so at 2 fps a 1-s
  visual event fills exactly one 2-frame temporal patch; events never overlap within a modality;
  exactly one audio event (the "anchor") coincides with a visual event, the others fall where no
  square is shown, and no other square is shown while a tone plays.

Questions, one per clip, of four types (`QUESTION_TYPES`), four options each:

    visual_detail   "Which colour of square did the video show?"      1 shown + 3 never shown
    audio_detail    "Which tone did the video play?"                  1 played + 3 never played
    audio_visual    "Which colour of square appeared with the tone whose frequency in Hz was 1000?"
                    the anchor's square; distractors: the other squares shown, then unseen colours
    temporal_order  "Which colour of square appeared first?" (or "last"); distractors: the other
                    squares shown, then unseen colours

Within a split, samples come in blocks of 4 that hold each type once and each answer letter once
(rows of a random 4x4 Latin square: every 16 samples hold each type x letter pair once), so types
and letters are balanced to within one over any split size.

Seeds: sample i of split s (0 train, 1 val, 2 test) uses seed (3 * seed + s) * 1_000_000 + i, so
splits (and base seeds) never share a clip. Everything derives from the seeds: the same arguments
give the same manifests and the same decoded frames (single-thread libx264).

Layout of `generate_testbed(out, ...)`:

    out/manifest.jsonl            every split, with `split` fields (read_manifest(path, split=...))
    out/<split>/manifest.jsonl    that split only
    out/<split>/clips/<split>_000000.mp4 ...
    out/testbed.json              the arguments; a rerun with the same ones writes nothing, a rerun
                                  with the same spec and seed (other sizes) reuses finished clips,
                                  other arguments regenerate everything

Manifest `events` (ground truth, times in seconds of the clip):

    {"kind": "visual", "label": "red", "start": 3.0, "end": 4.0, "box": [x0, y0, x1, y1], "rgb": [r, g, b]}
    {"kind": "audio", "label": "1000 Hz tone", "start": 3.0, "end": 4.0, "freq": 1000.0}

Run:
    python -m data_prep.testbed OUT --train 200 --val 20 --test 50 --seconds 16
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from data_prep.synthetic import _AAC_FRAME
from omnimem_train.data.manifest import SPLITS, Sample, write_manifest
from omnimem_train.errors import ConfigError
from omnimem_train.models.prompt import LETTERS
from omnimem_train.utils.atomic import atomic_write_text

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
}
QUESTION_TYPES = ("visual_detail", "audio_detail", "audio_visual", "temporal_order")
N_OPTIONS = 4
# Qwen2.5-Omni: 14-px patches merged 2x2 -> one LLM token per 28x28 pixels per 2 frames.
VISUAL_TOKEN_PIXELS = 28
TEMPORAL_PATCH = 2
# Qwen2.5-Omni audio: 100 log-mel frames/s, a stride-2 conv then stride-2 pooling -> 25 tokens/s
# (omnimem_train.media.features.audio_tokens_for_frames).
AUDIO_TOKENS_PER_S = 25.0
SEED_STRIDE = 1_000_000
DEPTHS = ("first", "middle", "last")  # thirds of a clip (`depth_thirds`)

_VERSION = 1  # of the clips: a new one re-renders them
_QUESTIONS_VERSION = 3  # of the question texts: a new one rewrites the manifests, keeping the clips
_META = "testbed.json"
_RAMP_S = 0.01  # tone on/off ramps (no clicks)


def tone_label(hz: float) -> str:
    return f"{hz:g} Hz tone"


@dataclass(frozen=True)
class TestbedSpec:
    """What one clip looks like. See the module docstring for the design and the token arithmetic."""

    __test__ = False  # not a pytest class

    seconds: float = 16.0
    width: int = 280
    height: int = 280
    fps: int = 4  # frames/s written to the mp4 (the model samples model_video_fps of them)
    sample_rate: int = 16000
    n_visual_events: int = 3
    n_audio_events: int = 2
    visual_event_seconds: float = 1.0
    audio_event_seconds: float = 1.0
    colours: tuple[str, ...] = tuple(COLOURS)
    tones: tuple[float, ...] = (250.0, 500.0, 1000.0, 2000.0, 4000.0)
    box_fraction: float = 0.3  # square side / min(width, height)
    tone_amplitude: float = 0.5
    noise_std: float = 0.005
    max_drift: float = 0.02  # background gradient drift, cycles/s (at most)
    # The stream the testbed is designed for (config media.video_fps / media.max_pixels).
    model_video_fps: float = 2.0
    model_max_pixels: int = 78400
    min_token_ratio: float = 4.0

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "colours", tuple(self.colours))
        object.__setattr__(self, "tones", tuple(float(t) for t in self.tones))
        problems = []
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            problems.append(f"seconds must be > 0, got {self.seconds}")
        if (
            self.width % VISUAL_TOKEN_PIXELS
            or self.height % VISUAL_TOKEN_PIXELS
            or min(self.width, self.height) < 56
        ):
            problems.append(
                f"width/height must be multiples of {VISUAL_TOKEN_PIXELS} and >= 56 (the model then sees "
                f"them unresized), got {self.width}x{self.height}"
            )
        elif self.width * self.height > self.model_max_pixels:
            problems.append(
                f"width*height = {self.width * self.height} > model_max_pixels = {self.model_max_pixels} "
                "(the model would shrink the frames)"
            )
        if self.fps < 1 or self.sample_rate < 8000:
            problems.append(f"need fps >= 1 and sample_rate >= 8000, got {self.fps}, {self.sample_rate}")
        if self.model_video_fps <= 0 or (self.fps / self.model_video_fps) % 1:
            problems.append(
                f"fps ({self.fps}) must be a multiple of model_video_fps ({self.model_video_fps})"
            )
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown or len(set(self.colours)) != len(self.colours):
            problems.append(f"colours must be distinct names from {list(COLOURS)}, got {list(self.colours)}")
        if len(set(self.tones)) != len(self.tones) or not all(
            0 < t < self.sample_rate / 2 for t in self.tones
        ):
            problems.append(f"tones must be distinct frequencies below sample_rate/2, got {list(self.tones)}")
        if not 2 <= self.n_visual_events <= len(self.colours) - (N_OPTIONS - 1):
            problems.append(
                f"n_visual_events must be in [2, len(colours) - {N_OPTIONS - 1}] = "
                f"[2, {len(self.colours) - N_OPTIONS + 1}] (order questions need two squares, detail "
                f"questions {N_OPTIONS - 1} unseen colours), got {self.n_visual_events}"
            )
        if not 1 <= self.n_audio_events <= len(self.tones) - (N_OPTIONS - 1):
            problems.append(
                f"n_audio_events must be in [1, len(tones) - {N_OPTIONS - 1}] = "
                f"[1, {len(self.tones) - N_OPTIONS + 1}], got {self.n_audio_events}"
            )
        if self.visual_event_seconds <= 0 or self.audio_event_seconds <= 0:
            problems.append("event seconds must be > 0")
        elif self.n_slots < self.n_visual_events + self.n_audio_events - 1:
            problems.append(
                f"{self.seconds} s hold {self.n_slots} event slots of {self.slot_seconds} s; "
                f"{self.n_visual_events + self.n_audio_events - 1} are needed"
            )
        if not 0 < self.box_fraction <= 0.5:
            problems.append(f"box_fraction must be in (0, 0.5], got {self.box_fraction}")
        if not (0 < self.tone_amplitude <= 0.9 and 0 <= self.noise_std <= 0.1 and self.max_drift >= 0):
            problems.append("need 0 < tone_amplitude <= 0.9, 0 <= noise_std <= 0.1, max_drift >= 0")
        if not problems and self.token_ratio < self.min_token_ratio:
            problems.append(
                f"visual:audio token ratio {self.token_ratio:.2f} < min_token_ratio {self.min_token_ratio}: "
                "raise width/height or model_video_fps"
            )
        if problems:
            raise ValueError("TestbedSpec: " + "; ".join(problems))

    @property
    def slot_seconds(self) -> int:
        """Events start on a grid of this many whole seconds (one event per slot and modality)."""
        return math.ceil(max(self.visual_event_seconds, self.audio_event_seconds))

    @property
    def n_slots(self) -> int:
        return int((self.seconds + 1e-9) // self.slot_seconds)

    @property
    def visual_tokens_per_s(self) -> float:
        """(H/28) * (W/28) tokens per 2-frame temporal patch, model_video_fps / 2 patches per second."""
        per_grid = (self.height // VISUAL_TOKEN_PIXELS) * (self.width // VISUAL_TOKEN_PIXELS)
        return per_grid * self.model_video_fps / TEMPORAL_PATCH

    @property
    def token_ratio(self) -> float:
        """Visual tokens per audio token in the model's stream (>= 4 by default: 100 / 25)."""
        return self.visual_tokens_per_s / AUDIO_TOKENS_PER_S

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def split_seed(seed: int, split: str, index: int) -> int:
    """The seed of sample `index` of `split`: disjoint across splits and base seeds."""
    if not 0 <= index < SEED_STRIDE:
        raise ValueError(f"sample index must be in [0, {SEED_STRIDE}), got {index}")
    return (3 * seed + SPLITS.index(split)) * SEED_STRIDE + index


# ---------------------------------------------------------------------------------------------
# One clip: plan (all randomness, cheap), then render (encode).


def depth_slots(spec: TestbedSpec, depth: int) -> range:
    """The event slots of third `depth` (0 first, 1 middle, 2 last) of a clip: slot k starts at
    k * slot_seconds and ends inside that third of `spec.seconds`."""
    if depth not in range(len(DEPTHS)):
        raise ValueError(f"depth must be 0, 1 or 2 (a third of the clip), got {depth}")
    third = spec.seconds / len(DEPTHS)
    first = math.ceil(depth * third / spec.slot_seconds - 1e-9)
    last = int(((depth + 1) * third + 1e-9) // spec.slot_seconds) - 1  # the slot must end in the third
    return range(first, last + 1)


def clip_depth(index: int) -> int:
    """The depth third of clip `index` of a split with `depth_thirds`: (index // 4) % 3. A block of 4
    clips holds each question type once (`_latin_blocks`), so every 12 clips hold each (type, depth)
    pair once."""
    return (index // len(QUESTION_TYPES)) % len(DEPTHS)


def plan_sample(spec: TestbedSpec, seed: int, depth: int | None = None) -> dict:
    """The ground truth of clip `seed` without writing it: {"events": [...], "background": {...}}.

    Events are sorted by start time; see the module docstring for their fields. With `depth` (0, 1, 2)
    every event of the clip lies in that third of it (`depth_slots`), so whatever a question asks
    about is there; None: anywhere.
    """
    rng = np.random.default_rng(seed)
    n_v, n_a = spec.n_visual_events, spec.n_audio_events
    pool = spec.n_slots if depth is None else np.asarray(depth_slots(spec, depth))
    if depth is not None and len(pool) < n_v + n_a - 1:
        raise ValueError(f"a third of {spec.seconds} s holds {len(pool)} event slots of {spec.slot_seconds} s; "
                         f"{n_v + n_a - 1} are needed")
    slots = rng.choice(pool, n_v + n_a - 1, replace=False) * spec.slot_seconds
    visual_starts, audio_only = slots[:n_v], slots[n_v:]
    anchor = visual_starts[int(rng.integers(n_v))]
    colours = [spec.colours[i] for i in rng.choice(len(spec.colours), n_v, replace=False)]
    tones = [spec.tones[i] for i in rng.choice(len(spec.tones), n_a, replace=False)]
    side = max(2, round(min(spec.width, spec.height) * spec.box_fraction) // 2 * 2)

    events = []
    for start, colour in zip(visual_starts, colours):
        x0 = 2 * int(rng.integers(0, (spec.width - side) // 2 + 1))
        y0 = 2 * int(rng.integers(0, (spec.height - side) // 2 + 1))
        events.append(
            {
                "kind": "visual",
                "label": colour,
                "start": float(start),
                "end": float(start + spec.visual_event_seconds),
                "box": [x0, y0, x0 + side, y0 + side],
                "rgb": list(COLOURS[colour]),
            }
        )
    for start, hz in zip([anchor, *audio_only], tones):
        events.append(
            {
                "kind": "audio",
                "label": tone_label(hz),
                "start": float(start),
                "end": float(start + spec.audio_event_seconds),
                "freq": float(hz),
            }
        )
    events.sort(key=lambda e: (e["start"], e["kind"] != "visual"))

    # Muted background: a grey level plus small per-channel offsets, two such colours in a gradient.
    grey = rng.uniform(80, 170)
    c0 = np.clip(grey + rng.uniform(-25, 25, 3), 0, 255)
    c1 = np.clip(grey + rng.uniform(-40, 40) + rng.uniform(-25, 25, 3), 0, 255)
    background = {
        "c0": [round(float(v), 2) for v in c0],
        "c1": [round(float(v), 2) for v in c1],
        "angle": round(float(rng.uniform(0, 2 * np.pi)), 4),
        "period": round(float(rng.uniform(1.0, 2.0)), 4),  # in units of max(width, height)
        "drift": round(float(rng.uniform(-1, 1) * spec.max_drift), 5),  # cycles/s
        "phase": round(float(rng.uniform(0, 1)), 4),
    }
    return {"seed": int(seed), "events": events, "background": background}


def _frames(spec: TestbedSpec, plan: dict):
    bg = plan["background"]
    yy, xx = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
    u = (xx * math.cos(bg["angle"]) + yy * math.sin(bg["angle"])) / (
        bg["period"] * max(spec.width, spec.height)
    )
    c0, c1 = np.array(bg["c0"], np.float32), np.array(bg["c1"], np.float32)
    visual = [e for e in plan["events"] if e["kind"] == "visual"]
    for i in range(round(spec.seconds * spec.fps)):
        t = i / spec.fps
        w = 0.5 + 0.5 * np.cos(2 * np.pi * (u + bg["phase"] + bg["drift"] * t))
        img = (c0 + (c1 - c0) * w[..., None] + 0.5).astype(np.uint8)
        for e in visual:
            if e["start"] - 1e-9 <= t < e["end"] - 1e-9:
                x0, y0, x1, y1 = e["box"]
                img[y0:y1, x0:x1] = e["rgb"]
        yield img


def _wave(spec: TestbedSpec, plan: dict) -> np.ndarray:
    sr = spec.sample_rate
    n = round(spec.seconds * sr)
    wave = np.random.default_rng([plan["seed"], 1]).normal(0.0, spec.noise_std, n)
    ramp = max(1, round(_RAMP_S * sr))
    for e in plan["events"]:
        if e["kind"] != "audio":
            continue
        a, b = round(e["start"] * sr), min(n, round(e["end"] * sr))
        t = np.arange(b - a) / sr
        env = np.ones(b - a)
        k = min(ramp, (b - a) // 2)
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        env[:k], env[b - a - k :] = rise, rise[::-1]
        wave[a:b] += spec.tone_amplitude * env * np.sin(2 * np.pi * e["freq"] * t)
    return wave.astype(np.float32)


def render_sample(spec: TestbedSpec, plan: dict, out_path: str | Path) -> Path:
    """Write the mp4 of `plan` (H.264 yuv420p + AAC mono), atomically (temp file, then rename)."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        vstream = container.add_stream("libx264", rate=Fraction(spec.fps))
        vstream.width, vstream.height, vstream.pix_fmt = spec.width, spec.height, "yuv420p"
        vstream.codec_context.options = {"preset": "ultrafast", "threads": "1"}  # reproducible bytes
        astream = container.add_stream("aac", rate=spec.sample_rate)
        astream.layout = "mono"
        for i, img in enumerate(_frames(spec, plan)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        wave = _wave(spec, plan)
        for start in range(0, len(wave), _AAC_FRAME):
            aframe = av.AudioFrame.from_ndarray(
                wave[None, start : start + _AAC_FRAME], format="fltp", layout="mono"
            )
            aframe.sample_rate, aframe.pts = spec.sample_rate, start
            container.mux(astream.encode(aframe))
        container.mux(astream.encode(None))
    os.replace(tmp, path)
    return path


def generate_sample(spec: TestbedSpec, seed: int, out_path: str | Path, depth: int | None = None) -> dict:
    """Write clip `seed` to `out_path`; returns its ground truth (`plan_sample`): {"seed", "events",
    "background"}."""
    plan = plan_sample(spec, seed, depth)
    render_sample(spec, plan, out_path)
    return plan


# ---------------------------------------------------------------------------------------------
# Questions.


def make_question(
    spec: TestbedSpec, events: list[dict], qtype: str, letter: int, rng: np.random.Generator
) -> tuple[str, list[str], str]:
    """(question, options, answer letter) of type `qtype` about `events`, the answer at `letter`.

    Each question ends on the word that decides its answer ("show" / "play" / the tone's frequency /
    "first" / "last"): asked as a completion (`answer_format: completion`) the answer is predicted
    on that word, and the testbed's small base model learns that far sooner than fetching the word
    from earlier in the prompt (docs/testbed.md)."""
    visual = [e for e in events if e["kind"] == "visual"]
    audio = [e for e in events if e["kind"] == "audio"]
    seen = [e["label"] for e in visual]
    unseen = [c for c in spec.colours if c not in seen]
    unheard = [tone_label(t) for t in spec.tones if tone_label(t) not in {e["label"] for e in audio}]

    def pick(pool: list[str]) -> str:
        return pool[int(rng.integers(len(pool)))]

    def draw(pool: list[str], k: int) -> list[str]:
        return [pool[i] for i in rng.choice(len(pool), k, replace=False)]

    if qtype == "visual_detail":
        question, answer = "Which colour of square did the video show?", pick(seen)
        distractors = draw(unseen, N_OPTIONS - 1)
    elif qtype == "audio_detail":
        question, answer = "Which tone did the video play?", pick([e["label"] for e in audio])
        distractors = draw(unheard, N_OPTIONS - 1)
    elif qtype in ("audio_visual", "temporal_order"):
        if qtype == "audio_visual":
            pairs = [(a, v) for a in audio for v in visual if a["start"] < v["end"] and v["start"] < a["end"]]
            if len(pairs) != 1:
                raise ValueError(f"audio_visual needs exactly one co-occurring pair, got {len(pairs)}")
            tone, square = pairs[0]
            question = f"Which colour of square appeared with the tone whose frequency in Hz was {tone['freq']:g}?"
            answer = square["label"]
        else:
            which = "first" if rng.integers(2) == 0 else "last"
            question = f"Which colour of square appeared {which}?"
            answer = seen[0] if which == "first" else seen[-1]
        others = [c for c in seen if c != answer]
        others = draw(others, min(len(others), N_OPTIONS - 1))
        distractors = others + draw(unseen, N_OPTIONS - 1 - len(others))
    else:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")
    distractors = [distractors[i] for i in rng.permutation(len(distractors))]
    options = distractors[:letter] + [answer] + distractors[letter:]
    return question, options, LETTERS[letter]


def _latin_blocks(rng: np.random.Generator, num: int) -> list[tuple[int, int]]:
    """(type index, letter index) for `num` samples: consecutive blocks of 4 are rows of random 4x4
    Latin squares (each type and each letter once per block; each pair once per 16)."""
    k = len(QUESTION_TYPES)
    out: list[tuple[int, int]] = []
    while len(out) < num:
        rows, cols, syms = rng.permutation(k), rng.permutation(k), rng.permutation(k)
        for r in rows:
            block = [(int(cols[c]), int(syms[(r + c) % k])) for c in range(k)]
            out.extend(block[i] for i in rng.permutation(k))
    return out[:num]


def split_samples(out_dir: str | Path, spec: TestbedSpec, seed: int, split: str, num: int,
                  questions: int = 1, depth_thirds: bool = False,
                  seconds: tuple[float, ...] | None = None) -> list[Sample]:
    """The manifest samples of `split` (clips under `out_dir/<split>/clips`), without writing media.

    `questions` per clip (1-4, of distinct types): with 1, clip i's type and letter come from the
    Latin-square blocks over clips; with k > 1, clip i takes k pairs of its own block (distinct
    types and letters; with k = 4 every type once, at four different letters). Ids get a `-q<j>`
    suffix when k > 1; the clips (and their seeds) do not depend on k.

    `depth_thirds`: clip i's events all lie in its third `clip_depth(i)` (`extra["depth"]`: "first",
    "middle" or "last"), balanced with the question types. `seconds`: clip i is `seconds[i % k]` long
    (a mix of lengths; default: `spec.seconds` for every clip).
    """
    if not 1 <= questions <= len(QUESTION_TYPES):
        raise ValueError(f"questions per clip must be in [1, {len(QUESTION_TYPES)}], got {questions}")
    out = Path(out_dir).absolute()
    rng = np.random.default_rng([seed, SPLITS.index(split), 7])
    k = len(QUESTION_TYPES)
    pairs = _latin_blocks(rng, num * (k if questions > 1 else 1))
    lengths = [clip_spec(spec, s) for s in (seconds or (spec.seconds,))]
    samples = []
    for i in range(num):
        s_seed = split_seed(seed, split, i)
        c_spec = lengths[i % len(lengths)]
        depth = clip_depth(i) if depth_thirds else None
        plan = plan_sample(c_spec, s_seed, depth)
        chosen = [pairs[i]] if questions == 1 else pairs[k * i : k * i + questions]
        for j, (qtype, letter) in enumerate(chosen):
            q_rng = np.random.default_rng([s_seed, 2] if j == 0 else [s_seed, 2, j])
            question, options, answer = make_question(c_spec, plan["events"], QUESTION_TYPES[qtype], letter, q_rng)
            samples.append(
                Sample(
                    id=f"testbed-{split}-{i:06d}" + (f"-q{j}" if questions > 1 else ""),
                    video=str(out / split / "clips" / f"{split}_{i:06d}.mp4"),
                    duration=float(c_spec.seconds),
                    question=question,
                    options=options,
                    answer=answer,
                    question_type=QUESTION_TYPES[qtype],
                    split=split,
                    media={"has_audio": True, "fps": float(spec.fps), "width": spec.width, "height": spec.height},
                    events=plan["events"],
                    extra={"seed": s_seed, **({} if depth is None else {"depth": DEPTHS[depth]})},
                )
            )
    return samples


def clip_spec(spec: TestbedSpec, seconds: float) -> TestbedSpec:
    """`spec` with clips `seconds` long (checked like any spec)."""
    return spec if float(seconds) == spec.seconds else replace(spec, seconds=float(seconds))


# ---------------------------------------------------------------------------------------------
# The data set.


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _render_one(spec: TestbedSpec, seed: int, path: str, depth: int | None = None) -> None:
    render_sample(spec, plan_sample(spec, seed, depth), path)


def _clip_todo(spec: TestbedSpec, samples: list[Sample]) -> list[tuple[str, int, TestbedSpec, int | None]]:
    """[(mp4 path, seed, the clip's spec, depth)] of the samples' clips not written yet, each once (a
    clip's later questions share its file)."""
    todo = {}
    for s in samples:
        if s.video not in todo and not Path(s.video).is_file():
            depth = s.extra.get("depth")
            todo[s.video] = (s.video, s.extra["seed"], clip_spec(spec, s.duration),
                             None if depth is None else DEPTHS.index(depth))
    return list(todo.values())


def _render_all(todo: list[tuple[str, int, TestbedSpec, int | None]], workers: int, log=None) -> None:
    """Render `todo` = [(mp4 path, seed, spec, depth)], in `workers` processes when > 1.

    Each clip is encoded single-threaded from its seed alone, so the bytes do not depend on the
    number of workers or the order; spawned (not forked) workers, since the caller may hold
    torch's thread pools.
    """
    from omnimem_train.utils.progress import progress

    t0 = time.perf_counter()
    # shown when the caller logs (a quiet call, e.g. from tests, stays quiet)
    with progress(total=len(todo), desc="testbed", unit="clip", disable=not (log and todo)) as bar:
        if workers <= 1 or len(todo) <= 1:
            for path, seed, spec, depth in todo:
                _render_one(spec, seed, path, depth)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                futures = [pool.submit(_render_one, spec, seed, path, depth) for path, seed, spec, depth in todo]
                for future in as_completed(futures):
                    future.result()
                    bar.update()
    if log and todo:
        seconds = time.perf_counter() - t0
        log(f"wrote {len(todo)} clips in {seconds:.1f} s ({seconds / len(todo):.3f} s per clip)")


def default_workers() -> int:
    """Processes for rendering: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def generate_testbed(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    n_test: int,
    spec: TestbedSpec | None = None,
    seed: int = 0,
    log=None,
    train_questions: int = 1,
    workers: int | None = None,
    depth_thirds: bool = False,
    train_seconds: list[float] | None = None,
) -> dict[str, Path]:
    """Write (or reuse) the testbed in `out_dir`; returns {split: that split's manifest}.

    `train_questions`: questions per training clip (1-4, distinct types; `split_samples`); the val
    and test splits keep one per clip. `workers`: rendering processes (default: one per usable
    core); the files are the same for any number.

    The long-stream split (`docs/testbed.md`): `depth_thirds` puts all events of each val/test clip in
    one third of it, the thirds balanced over clips and question types (`clip_depth`); training clips
    keep their events anywhere. `train_seconds`: training clip i is `train_seconds[i % k]` long (a mix
    of lengths; default: every clip `spec.seconds`).

    `out_dir/manifest.jsonl` holds all splits (the recipes read it with dataset_split). Idempotent:
    the same arguments with every file present write nothing; the same spec and seed reuse the
    clips already written (an interrupted or enlarged run resumes); any other spec or seed
    regenerates every clip. A manifest.jsonl not written by this generator is never touched
    (ConfigError). `log(message)` (optional) hears about progress.
    """
    spec = spec or TestbedSpec()
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if any(n < 0 or n >= SEED_STRIDE for n in counts.values()) or sum(counts.values()) == 0:
        raise ValueError(f"need 0 <= n < {SEED_STRIDE} per split and at least one sample, got {counts}")
    out = Path(out_dir).absolute()
    manifest, meta_path = out / "manifest.jsonl", out / _META
    meta = _read_json(meta_path) if meta_path.is_file() else None
    ours = isinstance(meta, dict) and meta.get("generator") == "testbed"
    if manifest.exists() and not ours:
        raise ConfigError(f"{manifest}: exists and was not written by data_prep.testbed; use another folder")

    lengths = tuple(float(x) for x in train_seconds) if train_seconds else None
    if lengths is not None and not all(x > 0 and math.isfinite(x) for x in lengths):
        raise ValueError(f"train_seconds must be lengths > 0, got {list(train_seconds)}")
    # Settings that change the clips (reused only when they are the same), recorded only when set so
    # that the testbeds written before them keep their meta.
    content = {"version": _VERSION, "spec": spec.to_json(), "seed": seed,
               **({"depth_thirds": True} if depth_thirds else {}),
               **({"train_seconds": list(lengths)} if lengths else {})}
    args = {**content, "questions": _QUESTIONS_VERSION, "counts": counts,
            **({"train_questions": train_questions} if train_questions != 1 else {})}
    samples = {split: split_samples(out, spec, seed, split, n, train_questions if split == "train" else 1,
                                    depth_thirds=depth_thirds and split != "train",
                                    seconds=lengths if split == "train" else None)
               for split, n in counts.items()}
    paths = {split: out / split / "manifest.jsonl" for split in SPLITS}
    everything = [s for split in SPLITS for s in samples[split]]
    if (
        ours
        and meta.get("args") == args
        and meta.get("complete") is True
        and manifest.is_file()
        and all(p.is_file() for p in paths.values())
        and all(Path(s.video).is_file() for s in everything)
    ):
        return paths

    prior = meta.get("args", {}) if ours else {}
    reuse = ours and {k: prior.get(k) for k in (*content, "depth_thirds", "train_seconds")} == {
        "depth_thirds": None, "train_seconds": None, **content}
    out.mkdir(parents=True, exist_ok=True)
    _write_json(meta_path, {"generator": "testbed", "args": args, "complete": False})
    for split in SPLITS:
        clips = out / split / "clips"
        clips.mkdir(parents=True, exist_ok=True)
        keep = {Path(s.video).name for s in samples[split]}
        for old in clips.glob(f"{split}_*.mp4"):  # stale, partial (.tmp.mp4) or of other arguments
            if not reuse or old.name not in keep:
                old.unlink()
    _render_all(_clip_todo(spec, everything), default_workers() if workers is None else workers, log)
    for split in SPLITS:
        write_manifest(paths[split], samples[split])
    write_manifest(manifest, everything)
    _write_json(meta_path, {"generator": "testbed", "args": args, "complete": True})
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (manifest.jsonl, <split>/clips, <split>/manifest.jsonl)")
    parser.add_argument("--train", type=int, default=200, help="training clips")
    parser.add_argument("--val", type=int, default=20, help="validation clips")
    parser.add_argument("--test", type=int, default=50, help="test clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-questions", type=int, default=1,
                        help="questions per training clip (1-4, distinct types; val/test keep 1)")
    parser.add_argument("--depth-thirds", action="store_true",
                        help="the long-stream split: each val/test clip's events all lie in one third of it "
                             "(first, middle, last: balanced over clips and question types)")
    parser.add_argument("--train-seconds", type=lambda v: [float(x) for x in v.split(",")], default=None,
                        help="comma-separated lengths of the training clips, cycled over them (a mix of "
                             "lengths, e.g. 4,16,64; default: --seconds)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: one per usable core; same files for any number)")
    d = TestbedSpec()
    parser.add_argument("--seconds", type=float, default=d.seconds, help="length of each clip")
    parser.add_argument("--width", type=int, default=d.width, help="frame width (multiple of 28)")
    parser.add_argument("--height", type=int, default=d.height, help="frame height (multiple of 28)")
    parser.add_argument("--fps", type=int, default=d.fps, help="frames/s written to the mp4")
    parser.add_argument("--visual-events", type=int, default=d.n_visual_events, help="squares per clip")
    parser.add_argument("--audio-events", type=int, default=d.n_audio_events, help="tones per clip")
    parser.add_argument("--visual-event-seconds", type=float, default=d.visual_event_seconds)
    parser.add_argument("--audio-event-seconds", type=float, default=d.audio_event_seconds)
    parser.add_argument("--box-fraction", type=float, default=d.box_fraction, help="square side / frame side")
    parser.add_argument(
        "--model-video-fps", type=float, default=d.model_video_fps, help="config media.video_fps"
    )
    parser.add_argument(
        "--model-max-pixels", type=int, default=d.model_max_pixels, help="config media.max_pixels"
    )
    args = parser.parse_args(argv)
    try:
        spec = TestbedSpec(
            seconds=args.seconds,
            width=args.width,
            height=args.height,
            fps=args.fps,
            n_visual_events=args.visual_events,
            n_audio_events=args.audio_events,
            visual_event_seconds=args.visual_event_seconds,
            audio_event_seconds=args.audio_event_seconds,
            box_fraction=args.box_fraction,
            model_video_fps=args.model_video_fps,
            model_max_pixels=args.model_max_pixels,
        )
        paths = generate_testbed(
            args.out, args.train, args.val, args.test, spec, args.seed, log=lambda m: print(m, flush=True),
            train_questions=args.train_questions, workers=args.workers,
            depth_thirds=args.depth_thirds, train_seconds=args.train_seconds,
        )
    except ValueError as e:
        parser.error(str(e))
    print(
        f"visual {spec.visual_tokens_per_s:g} tokens/s, audio {AUDIO_TOKENS_PER_S:g} tokens/s "
        f"(ratio {spec.token_ratio:g}:1)"
    )
    print(Path(args.out).absolute() / "manifest.jsonl")
    for split in SPLITS:
        print(paths[split])


if __name__ == "__main__":
    main()
