"""The normalized sample manifest: one JSON object per line, written by every data converter.

Fields of a line (all required unless marked optional):

    id             non-empty string, unique within the file
    video          path of the clip, or null (audio-only sample)
    audio          optional: a separate audio path, or null (then the video's own track is used)
    duration       seconds, a finite number > 0
    question       non-empty string
    options        list of non-empty strings, at most 10 (letters A-J); [] for open-ended questions
    answer         with options: the letter of the right option ("A".."J", among the options'
                   letters); without: the free-text answer (non-empty)
    question_type  string (converter-specific category)
    split          "train", "val" or "test"
    media          optional: probe results (has_audio, fps, width, height), an object or null
    events         optional: generator-specific ground truth, a list or null

Other keys are kept as they are in `Sample.extra` and written back. At least one of video/audio
must be set. Relative media paths are resolved against the manifest file's folder on reading;
`write_manifest` writes paths inside that folder relative to it, so a folder can be moved whole.

Every problem with a line raises `ConfigError` with one line: "<file>:<line>: <field>: <problem>".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from omnimem_train.errors import ConfigError
from omnimem_train.models.prompt import LETTERS, option_text
from omnimem_train.utils.atomic import atomic_write_text

SPLITS = ("train", "val", "test")
# Canonical key order of a written line; extra keys follow.
FIELDS = (
    "id",
    "video",
    "audio",
    "duration",
    "question",
    "options",
    "answer",
    "question_type",
    "split",
    "media",
    "events",
)
_OPTIONAL = {"audio", "media", "events"}


@dataclass
class Sample:
    """One manifest line. `video`/`audio` are path strings (absolute after `read_manifest`) or None;
    `line` is its 1-based line in the manifest `read_manifest` read it from (None otherwise)."""

    id: str
    video: str | None
    duration: float
    question: str
    options: list[str]
    answer: str
    question_type: str
    split: str = "train"
    audio: str | None = None
    media: dict | None = None
    events: list | None = None
    extra: dict = field(default_factory=dict)
    # Not a manifest field: `to_dict` never writes it, and samples compare equal whatever it holds.
    line: int | None = field(default=None, compare=False)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def answer_index(self) -> int | None:
        """Index of the right option (multiple choice), else None."""
        return LETTERS.index(self.answer) if self.options else None

    def answer_text(self, answer_format: str = "letter") -> str:
        """The target string: for multiple choice the right option as `streaming.infer` scores it
        (`prompt.option_text`: "B. green", or "green" with answer_format "option"), else the
        free-text answer."""
        if not self.options:
            return self.answer
        return option_text(self.options, LETTERS.index(self.answer), answer_format)

    def to_dict(self) -> dict:
        """The JSON object of this sample (paths as stored), known fields first, then `extra`."""
        clash = sorted(set(self.extra) & set(FIELDS))
        if clash:
            raise ValueError(f"sample {self.id!r}: extra keys {clash} shadow manifest fields")
        out = {
            "id": self.id,
            "video": self.video,
            "audio": self.audio,
            "duration": float(self.duration),
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
            "question_type": self.question_type,
            "split": self.split,
        }
        if self.media is not None:
            out["media"] = self.media
        if self.events is not None:
            out["events"] = self.events
        out.update(self.extra)
        return out


class _FieldError(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


def _kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _string(obj: dict, key: str, *, nullable: bool = False, nonempty: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        expected = "a string or null" if nullable else "a string"
        raise _FieldError(key, f"expected {expected}, got {_kind(value)}")
    if nonempty and not value.strip():
        raise _FieldError(key, "empty string")
    return value


def _resolve(p: str | None, base: Path) -> str | None:
    if p is None or os.path.isabs(p):
        return p
    return os.path.normpath(os.path.join(base, p))


def _parse(obj, base: Path) -> Sample:
    if not isinstance(obj, dict):
        raise _FieldError("line", f"expected a JSON object, got {_kind(obj)}")
    for key in FIELDS:
        if key not in obj and key not in _OPTIONAL:
            raise _FieldError(key, "missing required field")

    sample_id = _string(obj, "id")
    video = _string(obj, "video", nullable=True)
    audio = _string(obj, "audio", nullable=True)
    if video is None and audio is None:
        raise _FieldError("video", "video and audio are both null (a sample needs media)")

    duration = obj["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise _FieldError("duration", f"expected a number of seconds, got {_kind(duration)}")
    if not math.isfinite(duration) or duration <= 0:
        raise _FieldError("duration", f"must be a finite number > 0, got {duration}")

    question = _string(obj, "question")
    options = obj["options"]
    if not isinstance(options, list):
        raise _FieldError("options", f"expected a list of strings, got {_kind(options)}")
    for i, opt in enumerate(options):
        if not isinstance(opt, str):
            raise _FieldError("options", f"option {i} is {_kind(opt)}, expected a string")
        if not opt.strip():
            raise _FieldError("options", f"option {i} is an empty string")
    if len(options) > len(LETTERS):
        raise _FieldError("options", f"{len(options)} options, at most {len(LETTERS)} (A-{LETTERS[-1]})")

    answer = _string(obj, "answer")
    if options:
        letters = LETTERS[: len(options)]
        if answer not in letters:
            raise _FieldError(
                "answer", f"{answer!r} is not among the options' letters {letters[0]}-{letters[-1]}"
            )

    question_type = _string(obj, "question_type", nonempty=False)
    split = obj["split"]
    if split not in SPLITS:
        raise _FieldError("split", f"{split!r} is not one of {', '.join(SPLITS)}")

    media = obj.get("media")
    if media is not None and not isinstance(media, dict):
        raise _FieldError("media", f"expected an object or null, got {_kind(media)}")
    events = obj.get("events")
    if events is not None and not isinstance(events, list):
        raise _FieldError("events", f"expected a list or null, got {_kind(events)}")

    return Sample(
        id=sample_id,
        video=_resolve(video, base),
        audio=_resolve(audio, base),
        duration=float(duration),
        question=question,
        options=list(options),
        answer=answer,
        question_type=question_type,
        split=split,
        media=media,
        events=events,
        extra={k: v for k, v in obj.items() if k not in FIELDS},
    )


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {', '.join(SPLITS)}")


def read_manifest(path: str | Path, split: str | None = None, check_media: bool = False) -> list[Sample]:
    """All samples of a JSONL manifest (only those of `split` when given), validated line by line.

    Blank lines are skipped. Relative video/audio paths come back resolved against the manifest's
    folder (not following symlinks). With `check_media`, a video/audio path that is not an
    existing file is an error too. Raises ConfigError "<path>:<line>: <field>: <problem>".
    """
    _check_split(split)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found" if not path.exists() else f"{path}: not a file")
    base = Path(os.path.abspath(path.parent))
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{where}: line: not UTF-8 text ({e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: line: invalid JSON ({e.msg} at column {e.colno})") from None
            try:
                sample = _parse(obj, base)
            except _FieldError as e:
                raise ConfigError(f"{where}: {e}") from None
            if sample.id in seen:
                raise ConfigError(f"{where}: id: duplicate of line {seen[sample.id]} ({sample.id!r})")
            seen[sample.id] = line_no
            sample.line = line_no
            if check_media:
                for key in ("video", "audio"):
                    p = getattr(sample, key)
                    if p is not None and not os.path.isfile(p):
                        raise ConfigError(f"{where}: {key}: file not found: {p}")
            if split is None or sample.split == split:
                samples.append(sample)
    return samples


def _relativize(p: str | None, base: Path) -> str | None:
    """`p` relative to `base` (posix separators) when it is an absolute path inside it, else as is."""
    if p is None or not os.path.isabs(p):
        return p
    try:
        return Path(os.path.normpath(p)).relative_to(base).as_posix()
    except ValueError:
        return p


def write_manifest(path: str | Path, samples: Iterable[Sample]) -> Path:
    """Write `samples` as JSONL, atomically (a temp file in the same folder, then rename).

    Absolute media paths inside the manifest's folder are written relative to it; other paths
    as given (relative ones are taken as relative to the manifest's folder when read back).
    Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.abspath(path.parent))
    lines = []
    for s in samples:
        d = s.to_dict()
        d["video"], d["audio"] = _relativize(s.video, base), _relativize(s.audio, base)
        lines.append(json.dumps(d, ensure_ascii=False) + "\n")
    return atomic_write_text(path, "".join(lines))


def dataset_features():
    """The `datasets.Features` of `to_dataset` (fixed, whatever the samples hold)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features(
        {
            "id": string,
            "video": string,
            "audio": string,
            "duration": datasets.Value("float64"),
            "question": string,
            "options": datasets.List(string),
            "answer": string,
            "answer_text": string,
            "question_type": string,
            "split": string,
            "media": string,
            "events": string,
            "extra": string,
        }
    )


def to_dataset(samples: Iterable[Sample]):
    """A `datasets.Dataset`, one row per sample, with a fixed schema (`dataset_features`).

    Columns: the manifest fields (paths as stored in the samples, None when absent), `options`
    as a list of strings, plus `answer_text` (the target string). `media`, `events` and `extra`
    are JSON strings (None when absent) so that free-form contents never break the Arrow schema.
    """
    import datasets

    dump = lambda v: None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True)  # noqa: E731
    rows = [
        {
            "id": s.id,
            "video": s.video,
            "audio": s.audio,
            "duration": float(s.duration),
            "question": s.question,
            "options": [str(o) for o in s.options],
            "answer": s.answer,
            "answer_text": s.answer_text(),
            "question_type": s.question_type,
            "split": s.split,
            "media": dump(s.media),
            "events": dump(s.events),
            "extra": dump(s.extra or None),
        }
        for s in samples
    ]
    features = dataset_features()
    if not rows:  # from_list takes the columns from the first row
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    return datasets.Dataset.from_list(rows, features=features)
