"""LVBench (`video_info.meta.jsonl`) -> the normalized manifest.

Input: JSON Lines (or a JSON array), one object per video:

    key    the video id: the clip is `<key>.mp4` (or .mkv/.webm/...) in the media folder
    type   the video category (kept as extra `video_type`)
    qa     a list of questions, each
           uid             -> id (a string or an integer)
           question        the question text followed by its options as lines "(A) ...", "(B) ..."
                           ("A. ..." and "A) ..." are read too); they are parsed out into `options`,
                           any text after them is kept as extra `instruction`
           answer          "A".."D"
           question_type   a list of strings, joined with "|" (a plain string is kept as is)
           time_reference  kept as an extra

One manifest sample per `qa` item (`item` in a rejects line is its 1-based index). A line that is
not valid JSON or has no `qa` list is one reject. Split: "test" unless given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_prep.converters.common import (
    BAD_FIELD,
    BAD_OPTIONS,
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
    record,
    run_conversion,
    split_options,
    text,
)

NAME = "lvbench"
DEFAULT_SPLIT = "test"
ID_KEY = "uid"


def _question_type(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "|".join(v.strip() for v in value)
    raise RowError(BAD_FIELD, "question_type: expected a list of strings")


def _fields(qa, video: dict, media_dir: Path, split: str) -> dict:
    qa = record(qa)
    sid = ident(qa, ID_KEY)
    key = text(video, "key").strip()
    stem, options, tail = split_options(text(qa, "question"))
    if not options:
        raise RowError(BAD_OPTIONS, "question: no lettered option lines '(A) ...', '(B) ...' found")
    if not stem:
        raise RowError(MISSING_FIELD, "question: no question text before the options")
    return {
        "id": sid,
        "video": find_media(media_dir, key),
        "audio": None,
        "question": stem,
        "options": options,
        "answer": text(qa, "answer"),
        "question_type": _question_type(qa.get("question_type")),
        "split": split,
        "extra": {
            "dataset": NAME,
            "video_key": key,
            "video_type": video.get("type"),
            "time_reference": qa.get("time_reference"),
            "instruction": tail or None,
        },
    }


def read_rows(source: Path, media_dir: Path, split: str = DEFAULT_SPLIT) -> Iterator[Row]:
    for row, obj in iter_records(source):
        try:
            video = record(obj)
            qa = video.get("qa")
            if qa is None:
                raise RowError(MISSING_FIELD, "missing field 'qa'")
            if not isinstance(qa, list):
                raise RowError(BAD_FIELD, "qa: expected a list of questions")
            if not qa:
                raise RowError(MISSING_FIELD, "qa: empty list")
        except RowError as e:
            yield Row(row, id=loose_id(obj, "key"), error=e)
            continue
        for item, one in enumerate(qa, start=1):
            yield make_row(row, item, _fields, one, ID_KEY, video=video, media_dir=media_dir, split=split)


def convert(source, out_dir, media_dir=None, split: str = DEFAULT_SPLIT) -> ConvertResult:
    """Write `<out_dir>/manifest.jsonl` and `rejects.jsonl` from an LVBench JSON Lines file."""
    check_split(split)
    return run_conversion(NAME, source, out_dir, media_dir, lambda src, media: read_rows(src, media, split))
