"""Shared machinery of the converters: read rows, validate them, probe media, write manifest + rejects.

A converter turns its input file into a stream of `Row`s: each is either the fields of one
candidate sample (raw media paths, question, options, answer letter, ...), a `RowError` (the row
is malformed: bad JSON line, missing field, unparsable options) or a deliberate skip (a row the
user filtered out, e.g. Video-MME rows outside `--duration long`). `run_conversion` then, in
input order:

1. rejects a row whose id was already borne by an earlier row, valid or not ("duplicate id");
2. checks the options (1-10 non-empty strings) and that the answer is the letter of one of them
   (multiple choice) or a non-empty text (open-ended, options == []);
3. resolves the media paths against the media folder and probes each distinct file once
   (`omnimem_train.media.decode.probe`): a named video must exist, decode and hold a video
   stream, a named audio file must exist, decode and hold an audio stream;
4. fills `duration` (seconds, from the probe of the video, else of the audio) and `media`
   ({has_audio, fps, width, height}) and checks the result against the manifest's own rules.

Every row read ends up in exactly one place: `<out>/manifest.jsonl` (accepted, written atomically
by `write_manifest`), `<out>/rejects.jsonl` (one JSON line per rejected row: source, row, item,
id, kind, reason) or the skip count of the summary. Both files are rewritten on every run from
the inputs only, so running again on the same inputs gives byte-identical files.

`row` is the 1-based position of the record in the input file (the line number for JSON Lines,
blank lines included); `item` is the 1-based index of the question inside a nested record
(LVBench `qa`, Video-MME `questions`), else absent.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omnimem_train.data.manifest import SPLITS, Sample, _FieldError, _parse, write_manifest
from omnimem_train.errors import ConfigError, MediaError
from omnimem_train.media.decode import MediaInfo, probe
from omnimem_train.models.prompt import LETTERS
from omnimem_train.utils.atomic import atomic_write_text

MANIFEST_NAME = "manifest.jsonl"
REJECTS_NAME = "rejects.jsonl"

# Reject kinds (the `kind` of a rejects line; the summary counts by kind).
BAD_JSON = "bad JSON"
MISSING_FIELD = "missing field"
BAD_FIELD = "bad field"
BAD_OPTIONS = "bad options"
BAD_ANSWER = "answer not among options"
MISSING_MEDIA = "missing media"
UNREADABLE_MEDIA = "unreadable media"
NO_VIDEO = "no video stream"
NO_AUDIO = "no audio stream"
DUPLICATE_ID = "duplicate id"
UNSUPPORTED = "unsupported"

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")

# "A. text", "A) text", "(A) text", "A: text" (the letter, then punctuation, then space or end).
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.):])(?:\s+(.*\S))?\s*$")
_OPTION_PREFIX = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.):])(?:\s+|$)")
_ANSWER = re.compile(r"^\s*\(?([A-J])\)?[.:]?\s*$")
_ANSWER_START = re.compile(r"^\s*\(?([A-J])(?:\)|[.:,]|\s|$)")


class RowError(Exception):
    """A row is invalid: `kind` (one of the reject kinds above) and a one-line `reason`."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = " ".join(str(reason).split())


@dataclass
class Row:
    """One unit read from the input: candidate `fields`, or an `error`, or a `skip` reason."""

    row: int
    item: int | None = None
    id: str | None = None
    fields: dict | None = None
    error: RowError | None = None
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"row {self.row}" + (f" item {self.item}" if self.item is not None else "")


@dataclass
class ConvertResult:
    """What `run_conversion` did. rows == accepted + rejected (skipped rows are counted apart)."""

    format: str
    source: Path
    manifest: Path
    rejects: Path
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """E.g. "videomme: 3 accepted, 2 rejected (duplicate id: 1, missing media: 1), 4 skipped (...)"."""
        text = f"{self.format}: {self.accepted} accepted, {self.rejected} rejected"
        if self.reasons:
            text += " (" + ", ".join(f"{k}: {n}" for k, n in self.reasons.items()) + ")"
        if self.skipped:
            text += f", {self.skipped} skipped (" + ", ".join(f"{k}: {n}" for k, n in self.skip_reasons.items()) + ")"
        return text


# ---------------------------------------------------------------- reading input files


def iter_records(path: Path) -> Iterator[tuple[int, object]]:
    """(row, record) for each record of a .parquet, JSON array or JSON Lines file.

    A JSON Lines line that is not UTF-8 or not valid JSON comes as a `RowError` record (the other
    lines are still read); blank lines are skipped. A .json file that does not parse as a whole is
    read as JSON Lines unless it starts with "[" (then ConfigError, like an unreadable parquet).
    """
    if path.suffix.lower() == ".parquet":
        yield from _parquet_records(path)
        return
    data = path.read_bytes()
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        try:
            whole = json.loads(data)
        except ValueError as e:
            if data.lstrip()[:1] == b"[":
                where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
                raise ConfigError(f"{path}: invalid JSON ({msg}{where})") from None
        else:
            if isinstance(whole, list):
                yield from enumerate(whole, start=1)
                return
            if isinstance(whole, dict):  # a one-line JSON Lines file, or one record
                yield 1, whole
                return
            raise ConfigError(f"{path}: expected a JSON array of objects or JSON Lines, got {_kind(whole)}")
    yield from _json_lines(data)


def _json_lines(data: bytes) -> Iterator[tuple[int, object]]:
    for row, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield row, RowError(BAD_JSON, f"line is not UTF-8 text ({e.reason})")
            continue
        if not line.strip():
            continue
        try:
            yield row, json.loads(line)
        except json.JSONDecodeError as e:
            yield row, RowError(BAD_JSON, f"invalid JSON ({e.msg} at column {e.colno})")


def _parquet_records(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError/... for a bad file
        raise ConfigError(f"{path}: cannot read as parquet ({' '.join(str(e).split())})") from None
    yield from enumerate(table.to_pylist(), start=1)


# ---------------------------------------------------------------- field helpers for converters


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def record(obj) -> dict:
    """`obj` as a JSON object, else RowError."""
    if isinstance(obj, RowError):
        raise obj
    if not isinstance(obj, dict):
        raise RowError(BAD_FIELD, f"record: expected a JSON object, got {_kind(obj)}")
    return obj


def first_key(obj: dict, keys: tuple[str, ...]) -> str:
    """The first of `keys` present (not null) in `obj`, else keys[0]."""
    return next((k for k in keys if obj.get(k) is not None), keys[0])


def text(obj: dict, key: str | tuple[str, ...], *, required: bool = True) -> str | None:
    """A non-empty string field (the first present of several names); None if absent and optional."""
    key = first_key(obj, key) if isinstance(key, tuple) else key
    value = obj.get(key)
    if value is None:
        if required:
            raise RowError(MISSING_FIELD, f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise RowError(BAD_FIELD, f"{key}: expected a string, got {_kind(value)}")
    if not value.strip():
        if required:
            raise RowError(MISSING_FIELD, f"{key}: empty string")
        return None
    return value


def ident(obj: dict, key: str | tuple[str, ...]) -> str:
    """An id field: a non-empty string or an integer, as a string."""
    key = first_key(obj, key) if isinstance(key, tuple) else key
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text(obj, key).strip()


def loose_id(obj, key: str | tuple[str, ...] | None) -> str | None:
    """The id of a record for a rejects line, or None when it has none (never raises)."""
    if key is None or not isinstance(obj, dict):
        return None
    try:
        return ident(obj, key)
    except RowError:
        return None


def strip_option_prefixes(options: list[str]) -> list[str]:
    """Drop "A. "/"(A) "/"A) "/"A: " prefixes when *every* option carries the one of its position."""
    stripped = []
    for i, opt in enumerate(options):
        m = _OPTION_PREFIX.match(opt)
        if not m or (m.group(1) or m.group(2)) != LETTERS[i]:
            return options
        stripped.append(opt[m.end() :])
    return stripped


def options_field(value, key: str = "options") -> list[str]:
    """Options given as a list ["A. x", ...] / ["x", ...] or a dict {"A": "x", ...}: plain option texts.

    Numbers are taken as their text; letter prefixes are stripped (`strip_option_prefixes`).
    A dict must have the keys A, B, C, ... without gaps. Empty options or more than 10: RowError.
    """
    if value is None:
        raise RowError(MISSING_FIELD, f"missing field {key!r}")
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: str(k).strip().upper())
        want = list(LETTERS[: len(keys)])
        if len(keys) > len(LETTERS) or [str(k).strip().upper() for k in keys] != want:
            raise RowError(BAD_OPTIONS, f"{key}: keys {sorted(map(str, value))} are not the letters A, B, C, ...")
        value = [value[k] for k in keys]
    if not isinstance(value, list):
        raise RowError(BAD_OPTIONS, f"{key}: expected a list or an object, got {_kind(value)}")
    out = []
    for i, opt in enumerate(value):
        if isinstance(opt, (int, float)) and not isinstance(opt, bool):
            opt = str(opt)
        if not isinstance(opt, str):
            raise RowError(BAD_OPTIONS, f"{key}: option {i + 1} is {_kind(opt)}, expected a string")
        out.append(opt.strip())
    out = [o.strip() for o in strip_option_prefixes(out)]
    if not out:
        raise RowError(BAD_OPTIONS, f"{key}: no options")
    if len(out) > len(LETTERS):
        raise RowError(BAD_OPTIONS, f"{key}: {len(out)} options, at most {len(LETTERS)} (A-{LETTERS[-1]})")
    empty = [i + 1 for i, o in enumerate(out) if not o]
    if empty:
        raise RowError(BAD_OPTIONS, f"{key}: option {empty[0]} is empty")
    return out


def split_options(question: str) -> tuple[str, list[str], str]:
    """Split a question text that embeds its options as lines ("(A) x" / "A. x" / "A) x" / "A: x").

    -> (question before the options, option texts, text after them). The options are the first run
    of consecutive lines lettered A, B, C, ... (blank lines between them allowed), at least two;
    without such a run: (question, [], "").
    """
    lines = question.strip().splitlines()
    for start, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if not m or (m.group(1) or m.group(2)) != "A":
            continue
        options, end = [], start
        for j in range(start, len(lines)):
            if not lines[j].strip():
                continue
            m = _OPTION_LINE.match(lines[j])
            if len(options) == len(LETTERS) or not m or (m.group(1) or m.group(2)) != LETTERS[len(options)]:
                break
            options.append((m.group(3) or "").strip())
            end = j + 1
        if len(options) >= 2:
            stem = "\n".join(lines[:start]).strip()
            tail = "\n".join(lines[end:]).strip()
            return stem, options, tail
    return question.strip(), [], ""


def answer_letter(value, *, prefix: bool = False) -> str | None:
    """The letter of an answer "B" / "(B)" / "B." (with `prefix`: also "B. green", "B) ...")."""
    if not isinstance(value, str):
        return None
    m = (_ANSWER_START if prefix else _ANSWER).match(value)
    return m.group(1) if m else None


def find_media(media_dir: Path, stem: str, suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> str:
    """`stem` + the first suffix for which a file exists in `media_dir`, else stem + suffixes[0]."""
    for suffix in suffixes:
        if (media_dir / f"{stem}{suffix}").is_file():
            return f"{stem}{suffix}"
    return f"{stem}{suffixes[0]}"


def make_row(row: int, item: int | None, build: Callable[..., dict], obj, id_key=None, **kwargs) -> Row:
    """Row(fields=build(obj, **kwargs)), or Row(error=...) carrying the record's id when it has one."""
    try:
        fields = build(obj, **kwargs)
    except RowError as e:
        return Row(row, item, id=loose_id(obj, id_key), error=e)
    return Row(row, item, id=fields["id"], fields=fields)


# ---------------------------------------------------------------- validation + writing


class _Prober:
    """probe() each distinct path once; remembers failures as (kind, reason)."""

    def __init__(self):
        self.cache: dict[str, MediaInfo | RowError] = {}

    def __call__(self, path: str, role: str) -> MediaInfo:
        if path not in self.cache:
            if not os.path.exists(path):
                self.cache[path] = RowError(MISSING_MEDIA, f"{path}: file not found")
            else:
                try:
                    self.cache[path] = probe(path)
                except MediaError as e:
                    self.cache[path] = RowError(UNREADABLE_MEDIA, str(e))
        got = self.cache[path]
        if isinstance(got, RowError):
            raise RowError(got.kind, f"{role}: {got.reason}")
        return got


def _resolve(raw, media_dir: Path, role: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise RowError(BAD_FIELD, f"{role}: expected a file path, got {_kind(raw)!s}")
    return os.path.normpath(os.path.join(media_dir, os.path.expanduser(raw.strip())))


def _sample(fields: dict, media_dir: Path, prober: _Prober) -> Sample:
    options = fields["options"]
    answer = fields["answer"]
    if options:
        letter = answer_letter(answer)
        letters = LETTERS[: len(options)]
        if letter is None or letter not in letters:
            raise RowError(BAD_ANSWER, f"answer {answer!r} is not among the options' letters {letters[0]}-{letters[-1]}")
        answer = letter
    elif not isinstance(answer, str) or not answer.strip():
        raise RowError(MISSING_FIELD, "answer: empty (open-ended question)")

    video = _resolve(fields.get("video"), media_dir, "video")
    audio = _resolve(fields.get("audio"), media_dir, "audio")
    if video is None and audio is None:
        raise RowError(MISSING_FIELD, "no video or audio file named")
    vinfo = prober(video, "video") if video else None
    ainfo = prober(audio, "audio") if audio else None
    if vinfo is not None and not vinfo.has_video:
        raise RowError(NO_VIDEO, f"video: {video}: no video stream")
    if ainfo is not None and not ainfo.has_audio:
        raise RowError(NO_AUDIO, f"audio: {audio}: no audio stream")
    main = vinfo or ainfo
    media = {
        "has_audio": bool(ainfo is not None or (vinfo is not None and vinfo.has_audio)),
        "fps": vinfo.fps if vinfo else None,
        "width": vinfo.width if vinfo else None,
        "height": vinfo.height if vinfo else None,
    }
    sample = Sample(
        id=fields["id"],
        video=video,
        audio=audio,
        duration=float(main.duration_s),
        question=fields["question"].strip(),
        options=list(options),
        answer=answer.strip(),
        question_type=fields.get("question_type") or "",
        split=fields["split"],
        media=media,
        extra={k: v for k, v in (fields.get("extra") or {}).items() if v is not None},
    )
    try:  # the manifest's own rules: what is written here always reads back
        _parse(sample.to_dict(), media_dir)
    except (_FieldError, ValueError) as e:
        raise RowError(BAD_FIELD, str(e)) from None
    return sample


def _write_lines(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "".join(lines))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r} is not one of {', '.join(SPLITS)}")


def check_paths(source, out_dir, media_dir) -> tuple[Path, Path, Path]:
    """(source, out_dir, media_dir) as absolute paths; ConfigError for a missing input/media folder."""
    source = Path(os.path.abspath(source))
    if not source.exists():
        raise ConfigError(f"{source}: input file not found")
    if not source.is_file():
        raise ConfigError(f"{source}: input is not a file")
    media = Path(os.path.abspath(media_dir)) if media_dir is not None else source.parent
    if not media.is_dir():
        raise ConfigError(f"{media}: media folder not found")
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output exists and is not a folder")
    if source in (out / MANIFEST_NAME, out / REJECTS_NAME):
        raise ConfigError(f"{source}: the input would be overwritten by the output; use another --out")
    return source, out, media


def run_conversion(
    name: str,
    source,
    out_dir,
    media_dir,
    read_rows: Callable[[Path, Path], Iterable[Row]],
) -> ConvertResult:
    """Validate the rows `read_rows(source, media_dir)` yields and write manifest.jsonl + rejects.jsonl.

    `media_dir` defaults to the input file's folder. Returns the counts (see `ConvertResult`).
    """
    source, out, media = check_paths(source, out_dir, media_dir)
    result = ConvertResult(name, source, out / MANIFEST_NAME, out / REJECTS_NAME)
    prober = _Prober()
    seen: dict[str, str] = {}
    samples: list[Sample] = []
    rejects: list[str] = []
    reasons: Counter = Counter()
    skips: Counter = Counter()
    for row in read_rows(source, media):
        if row.skip is not None:
            result.skipped += 1
            skips[row.skip] += 1
            continue
        result.rows += 1
        error = row.error
        if error is None and row.id in seen:
            error = RowError(DUPLICATE_ID, f"id {row.id!r} already used by {seen[row.id]}")
        if row.id is not None:  # the first row bearing an id claims it, valid or not
            seen.setdefault(row.id, row.where)
        if error is None:
            try:
                samples.append(_sample(row.fields, media, prober))
            except RowError as e:
                error = e
        if error is not None:
            reasons[error.kind] += 1
            line = {"source": str(source), "row": row.row}
            if row.item is not None:
                line["item"] = row.item
            line.update({"id": row.id, "kind": error.kind, "reason": error.reason})
            rejects.append(json.dumps(line, ensure_ascii=False) + "\n")
    result.accepted, result.rejected = len(samples), len(rejects)
    result.reasons = dict(sorted(reasons.items()))
    result.skip_reasons = dict(sorted(skips.items()))
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(result.manifest, samples)
    _write_lines(result.rejects, rejects)
    return result
