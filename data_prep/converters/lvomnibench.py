"""LVOmniBench -> the normalized manifest.

The field names are assumed from its release (not checked against a published schema here); the
input is a JSON array (or JSON Lines) of objects

    id        -> id (a string or an integer; also read as `question_id` / `qid`)
    video     the clip's path, relative to the media folder (also `video_path`)
    audio     optional: a separate audio file's path (also `audio_path`); else the video's track
    question  the question text
    options   either a list ["x", "y", ...] (with or without "A. " prefixes, stripped when every
              option has the one of its position) or an object {"A": "x", "B": "y", ...}
    answer    the letter of the right option
    task / category   -> question_type (task preferred; both kept as extras)

Split: "test" unless given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_prep.converters.common import (
    ConvertResult,
    Row,
    check_split,
    ident,
    iter_records,
    make_row,
    options_field,
    record,
    run_conversion,
    text,
)

NAME = "lvomnibench"
DEFAULT_SPLIT = "test"
ID_KEYS = ("id", "question_id", "qid")


def _fields(obj, split: str) -> dict:
    obj = record(obj)
    sid = ident(obj, ID_KEYS)
    task = text(obj, "task", required=False)
    category = text(obj, "category", required=False)
    return {
        "id": sid,
        "video": text(obj, ("video", "video_path")),
        "audio": text(obj, ("audio", "audio_path"), required=False),
        "question": text(obj, "question"),
        "options": options_field(obj.get("options")),
        "answer": text(obj, "answer"),
        "question_type": (task or category or "").strip(),
        "split": split,
        "extra": {"dataset": NAME, "task": task, "category": category},
    }


def read_rows(source: Path, media_dir: Path, split: str = DEFAULT_SPLIT) -> Iterator[Row]:
    for row, obj in iter_records(source):
        yield make_row(row, None, _fields, obj, ID_KEYS, split=split)


def convert(source, out_dir, media_dir=None, split: str = DEFAULT_SPLIT) -> ConvertResult:
    """Write `<out_dir>/manifest.jsonl` and `rejects.jsonl` from an LVOmniBench JSON file."""
    check_split(split)
    return run_conversion(NAME, source, out_dir, media_dir, lambda src, media: read_rows(src, media, split))
