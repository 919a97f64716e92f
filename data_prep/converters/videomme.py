"""Video-MME (lmms-lab/Video-MME) -> the normalized manifest.

Input: the published parquet (`videomme/test-00000-of-00001.parquet`), or the same rows as a JSON
array / JSON Lines file, one row per question with the columns

    video_id      "001"                       (kept as extra `video_id`)
    duration      "short" | "medium" | "long" (kept as extra `duration_class`; `duration` is probed)
    domain, sub_category                      (kept as extras)
    videoID       the YouTube id: the clip is `<videoID>.mp4` (or .mkv/.webm/...) in the media folder
    question_id   "001-1"                     -> id
    task_type     "Counting Problem"          -> question_type
    question, options ["A. ...", "B. ...", ...] (prefixes stripped), answer "A".."D"

The nested JSON of the original Video-MME release (one object per video with a `questions` list
of {question_id, task_type, question, options, answer}) is read too: each question is one row
item. `duration="long"` (CLI `--duration long`) keeps only that split; the other rows are counted
as skipped in the summary. Split: "test" unless given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_prep.converters.common import (
    BAD_FIELD,
    MISSING_FIELD,
    ConvertResult,
    Row,
    RowError,
    check_split,
    find_media,
    ident,
    iter_records,
    loose_id,
    make_row,
    options_field,
    record,
    run_conversion,
    text,
)
from omnimem_train.errors import ConfigError

NAME = "videomme"
DEFAULT_SPLIT = "test"
DURATIONS = ("short", "medium", "long")
ID_KEY = "question_id"


def _fields(obj, media_dir: Path, split: str) -> dict:
    obj = record(obj)
    sid = ident(obj, ID_KEY)
    youtube = text(obj, "videoID").strip()
    return {
        "id": sid,
        "video": find_media(media_dir, youtube),
        "audio": None,
        "question": text(obj, "question"),
        "options": options_field(obj.get("options")),
        "answer": text(obj, "answer"),
        "question_type": text(obj, "task_type", required=False) or "",
        "split": split,
        "extra": {
            "dataset": NAME,
            "video_id": obj.get("video_id"),
            "duration_class": obj.get("duration"),
            "domain": obj.get("domain"),
            "sub_category": obj.get("sub_category"),
        },
    }


def _one(row: int, item: int | None, obj, media_dir: Path, split: str, duration: str | None) -> Row:
    if duration is not None and isinstance(obj, dict):
        cls = obj.get("duration")
        if cls is None:
            return Row(row, item, id=loose_id(obj, ID_KEY), error=RowError(MISSING_FIELD, "missing field 'duration' (needed by the duration filter)"))
        if cls not in DURATIONS:
            return Row(row, item, id=loose_id(obj, ID_KEY), error=RowError(BAD_FIELD, f"duration: {cls!r} is not one of {', '.join(DURATIONS)}"))
        if cls != duration:
            return Row(row, item, skip=f"duration {cls}, not {duration}")
    return make_row(row, item, _fields, obj, ID_KEY, media_dir=media_dir, split=split)


def read_rows(source: Path, media_dir: Path, split: str = DEFAULT_SPLIT, duration: str | None = None) -> Iterator[Row]:
    for row, obj in iter_records(source):
        if isinstance(obj, dict) and isinstance(obj.get("questions"), list):  # original nested release
            video = {k: v for k, v in obj.items() if k != "questions"}
            if not obj["questions"]:
                yield Row(row, error=RowError(MISSING_FIELD, "questions: empty list"))
            for item, q in enumerate(obj["questions"], start=1):
                yield _one(row, item, {**video, **q} if isinstance(q, dict) else q, media_dir, split, duration)
        else:
            yield _one(row, None, obj, media_dir, split, duration)


def convert(source, out_dir, media_dir=None, split: str = DEFAULT_SPLIT, duration: str | None = None) -> ConvertResult:
    """Write `<out_dir>/manifest.jsonl` and `rejects.jsonl` from a Video-MME parquet/JSON file."""
    check_split(split)
    if duration is not None and duration not in DURATIONS:
        raise ConfigError(f"duration: {duration!r} is not one of {', '.join(DURATIONS)}")
    return run_conversion(
        NAME, source, out_dir, media_dir, lambda src, media: read_rows(src, media, split, duration)
    )
