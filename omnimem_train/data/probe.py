"""Check every sample's media before a model loads, and stop on a bad one or skip and report it.

    from functools import partial
    from omnimem_train.media.decode import check_sources

    check = partial(check_sources, audio_mode=cfg.media.audio)
    samples = probe_samples(samples, cfg.dataset, check, cfg.data.on_bad_sample, cfg.output_dir)

`check(video, audio)` raises `MediaError` "<field>: <problem>" for a sample whose files would fail
while streaming (`media.decode.check_sources`: the files open, have the streams they are read for
and decode at both ends). It is passed in because this package does not import `media`.

on_bad "error": the first bad sample raises MediaError "<manifest>:<line>: <field>: <problem>".
on_bad "skip": bad samples are dropped; `<output_dir>/skipped.jsonl` lists each ({"line", "id",
"reason"}), and one line says how many were skipped. Every kept sample is returned, in order.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from omnimem_train.data.manifest import Sample
from omnimem_train.errors import MediaError
from omnimem_train.utils.atomic import atomic_write_text

SKIPPED = "skipped.jsonl"


def probe_samples(samples: list[Sample], manifest: str | Path, check: Callable[[str | None, str | None], None],
                  on_bad: str = "error", output_dir: str | Path | None = None,
                  err: TextIO | None = None) -> list[Sample]:
    """The samples whose media pass `check` (all of them, or MediaError, with on_bad "error").

    With on_bad "skip", `output_dir` gets skipped.jsonl when a sample was skipped (a stale one
    from an earlier run is removed when none was), and `err` (default stderr) the count.
    """
    from omnimem_train.utils.progress import progress

    err = err or sys.stderr
    kept, skipped = [], []
    # transient: a quick check leaves no line, so the skip count (or the error) is its only output
    for s in progress(samples, desc="checking media", unit="sample", file=err, leave=False, transient=True):
        try:
            check(s.video, s.audio)
        except MediaError as e:
            where = f"{manifest}:{s.line}" if s.line is not None else f"{manifest}: sample {s.id!r}"
            if on_bad != "skip":
                raise MediaError(f"{where}: {e}") from e
            skipped.append({"line": s.line, "id": s.id, "reason": str(e)})
        else:
            kept.append(s)
    path = Path(output_dir) / SKIPPED if output_dir is not None else None
    if not skipped:
        if path is not None:
            path.unlink(missing_ok=True)
        return kept
    if path is not None:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in skipped))
    see = f": see {path}" if path is not None else ""
    print(f"skipped {len(skipped)} of {len(samples)} samples with unreadable media{see}", file=err, flush=True)
    if not kept:
        raise MediaError(f"{manifest}: every sample has unreadable media ({len(samples)} skipped{see})")
    return kept
