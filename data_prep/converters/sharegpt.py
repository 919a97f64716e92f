"""ShareGPT / LLaMA-Factory audio-visual training data -> the normalized manifest.

Input: a JSON array (or JSON Lines) of objects

    messages  [{"role": "user", "content": "<video><audio>question..."},
               {"role": "assistant", "content": "answer"}]
              (or `conversations` with {"from": "human" | "gpt", "value": ...}); an optional
              leading system turn is kept as extra `system`
    videos    [path] (or one path string), relative to the media folder; at most one
    audios    [path], optional: a separate audio file; without it the video's own track is used
    id        optional; default "<input file stem>-<row>"

The `<video>` / `<audio>` placeholders must match the lists (one tag per file, as LLaMA-Factory
requires) and are removed from the question. When the user text holds lettered option lines
("A. x", "B. y", ... or "(A) x"), the sample is multiple choice: the lines before them are the
question, the lines after them are kept as extra `instruction`, and the assistant answer must
start with one of the option letters (kept whole as extra `response`). Otherwise it is
open-ended: options [] and answer = the assistant text. Multi-turn conversations, images and
more than one video/audio per sample are rejected ("unsupported"). question_type: the row's
`question_type` field if any, else "multiple_choice" / "open_ended". Split: "train" unless given.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from data_prep.converters.common import (
    BAD_ANSWER,
    BAD_FIELD,
    MISSING_FIELD,
    UNSUPPORTED,
    ConvertResult,
    Row,
    RowError,
    answer_letter,
    check_split,
    ident,
    iter_records,
    make_row,
    record,
    run_conversion,
    split_options,
    text,
)
from omnimem_train.models.prompt import LETTERS

NAME = "sharegpt"
DEFAULT_SPLIT = "train"
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
_TAG = re.compile(r"<(video|audio)>")


def _paths(obj: dict, key: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RowError(BAD_FIELD, f"{key}: expected a list of file paths")
    return value


def _turns(obj: dict) -> list[tuple[str, str]]:
    if obj.get("messages") is not None:
        key, role_key, content_key = "messages", "role", "content"
    elif obj.get("conversations") is not None:
        key, role_key, content_key = "conversations", "from", "value"
    else:
        raise RowError(MISSING_FIELD, "missing field 'messages' (or 'conversations')")
    turns = obj[key]
    if not isinstance(turns, list):
        raise RowError(BAD_FIELD, f"{key}: expected a list of turns")
    out = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError(BAD_FIELD, f"{key}: turn {i} is not an object")
        role = turn.get(role_key)
        if role not in ROLES:
            raise RowError(UNSUPPORTED, f"{key}: turn {i}: role {role!r} (supported: {', '.join(ROLES)})")
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RowError(BAD_FIELD, f"{key}: turn {i}: {content_key}: expected a string")
        out.append((ROLES[role], content))
    return out


def _default_id(source: Path, row: int) -> str:
    return f"{source.stem}-{row}"


def _fields(obj, source: Path, index: int, split: str) -> dict:
    obj = record(obj)
    sid = ident(obj, "id") if obj.get("id") is not None else _default_id(source, index)
    turns = _turns(obj)
    system = None
    if turns and turns[0][0] == "system":
        system, turns = turns[0][1], turns[1:]
    roles = [r for r, _ in turns]
    if roles.count("user") > 1 or roles.count("assistant") > 1 or "system" in roles:
        raise RowError(UNSUPPORTED, f"{len(turns)} turns; only one user turn and one assistant answer are supported")
    if roles != ["user", "assistant"]:
        raise RowError(MISSING_FIELD, "expected a user turn followed by an assistant answer")
    user, response = turns[0][1], turns[1][1]

    videos, audios = _paths(obj, "videos"), _paths(obj, "audios")
    if _paths(obj, "images") or "<image>" in user:
        raise RowError(UNSUPPORTED, "images are not supported")
    if len(videos) > 1 or len(audios) > 1:
        raise RowError(UNSUPPORTED, f"{len(videos)} videos and {len(audios)} audios; at most one of each is supported")
    if not videos and not audios:
        raise RowError(MISSING_FIELD, "no media: 'videos' and 'audios' are empty")
    tags = _TAG.findall(user)
    for kind, files in (("video", videos), ("audio", audios)):
        if tags.count(kind) != len(files):
            raise RowError(BAD_FIELD, f"{tags.count(kind)} <{kind}> placeholder(s) but {len(files)} {kind} file(s)")

    stem, options, tail = split_options(_TAG.sub("", user))
    if not stem:
        raise RowError(MISSING_FIELD, "user turn: no question text")
    if not response.strip():
        raise RowError(MISSING_FIELD, "assistant answer: empty")
    if options:
        answer = answer_letter(response, prefix=True)
        if answer is None or answer not in LETTERS[: len(options)]:
            raise RowError(
                BAD_ANSWER,
                f"assistant answer {response.strip()[:40]!r} does not start with an option letter A-{LETTERS[len(options) - 1]}",
            )
    else:
        answer = response.strip()
    qtype = text(obj, "question_type", required=False)
    return {
        "id": sid,
        "video": videos[0] if videos else None,
        "audio": audios[0] if audios else None,
        "question": stem,
        "options": options,
        "answer": answer,
        "question_type": qtype or ("multiple_choice" if options else "open_ended"),
        "split": split,
        "extra": {
            "dataset": NAME,
            "system": system,
            "instruction": tail or None,
            "response": response.strip() if options else None,
        },
    }


def read_rows(source: Path, media_dir: Path, split: str = DEFAULT_SPLIT) -> Iterator[Row]:
    for row, obj in iter_records(source):
        one = make_row(row, None, _fields, obj, "id", source=source, index=row, split=split)
        if one.id is None and isinstance(obj, dict) and obj.get("id") is None:
            one.id = _default_id(source, row)
        yield one


def convert(source, out_dir, media_dir=None, split: str = DEFAULT_SPLIT) -> ConvertResult:
    """Write `<out_dir>/manifest.jsonl` and `rejects.jsonl` from a ShareGPT/LLaMA-Factory JSON file."""
    check_split(split)
    return run_conversion(NAME, source, out_dir, media_dir, lambda src, media: read_rows(src, media, split))
