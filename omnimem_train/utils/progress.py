"""Progress of the long phases (rendering, media checks, training steps, eval cells, calibration,
export verification): done/total, a rate and an ETA.

In a terminal it is a tqdm bar. Anywhere else (a log file, CI, captured output) a bar's `\\r`
redraws would pile up on one line, so it becomes plain lines, at most one per interval (10 s;
`OMNIMEM_PROGRESS_INTERVAL` seconds when set), plus a closing line when the phase ends:

    eval omnimem-f0.0625-calibrated: sample 120/300, 3.4 samples/s, ETA 53 s
    eval omnimem-f0.0625-calibrated: sample 300/300, 3.4 samples/s, done in 1 min 28 s

`progress` is the one way to show it; `training_progress` is the HF Trainer's (it replaces
transformers' ProgressCallback / PrinterCallback).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

from omnimem_train.errors import ConfigError

INTERVAL_ENV = "OMNIMEM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0  # a log is never silent for 15 s (the first line also waits out one interval)


def line_interval() -> float:
    """Seconds between two progress lines outside a terminal."""
    value = os.environ.get(INTERVAL_ENV, "").strip()
    if not value:
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{INTERVAL_ENV}={value!r}: expected a number of seconds >= 0")
    return seconds


def is_terminal(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             file: TextIO | None = None, *, leave: bool = True, transient: bool = False,
             interval: float | None = None, initial: int = 0, disable: bool = False) -> tqdm:
    """A tqdm over `iterable` (or updated by hand up to `total`) on `file` (default stderr).

    In a terminal: a bar (`leave`: it stays when done). Elsewhere: plain lines, at most one per
    `interval` seconds (default `line_interval()`), and a closing line; `transient`: no closing
    line for a phase that ended before its first line.
    """
    file = file if file is not None else sys.stderr
    if is_terminal(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, leave=leave, initial=initial,
                    dynamic_ncols=True, disable=disable)
    interval = line_interval() if interval is None else interval
    # miniters=1: check the clock on every update (tqdm's adaptive miniters could wait past an
    # interval); leave=False: the closing line is written by `_Lines.close`, not tqdm's redraw.
    bar = _Lines(iterable, total=total, desc=desc, unit=unit, file=file, leave=False, initial=initial,
                 mininterval=interval, miniters=1, disable=disable)
    bar.transient = transient
    return bar


def _units(unit: str) -> str:
    return unit + "s" if unit.isalpha() and len(unit) > 1 and not unit.endswith("s") else unit


def _number(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def duration(seconds: float) -> str:
    """`53 s`, `2 min 05 s`, `1 h 02 min`."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Lines(tqdm):
    """tqdm writing whole lines instead of redrawing a bar (`progress` outside a terminal)."""

    monitor_interval = 0  # no monitor thread: lines come from update() and close() only
    transient = False
    shown = False  # a line was written before the closing one
    line_n = 0  # the count the last line showed
    abandoned = False  # the phase ended in an error: no closing line

    def line(self, final: bool = False) -> str:
        """`<desc>: <unit> n/total, <rate>, ETA <t>` (closing: `done in <t>` / `stopped after <t>`)."""
        d = self.format_dict
        n, total, elapsed = d["n"], d["total"], d["elapsed"]
        done = n - self.initial
        # While running, tqdm's smoothed rate follows a change of pace; the closing line gives the
        # overall average.
        rate = d["rate"] if d["rate"] and not final else (done / elapsed if elapsed > 0 and done else None)
        unit = self.unit
        text = f"{unit} {n}/{total}" if total else f"{unit} {n}"
        parts = [f"{self.desc}: {text}" if self.desc else text]
        if rate:
            parts.append(f"{_number(rate)} {_units(unit)}/s" if rate >= 1 else f"{_number(1 / rate)} s/{unit}")
        if final:
            parts.append(f"{'done in' if total is None or n >= total else 'stopped after'} {duration(elapsed)}")
        elif total and rate:
            parts.append(f"ETA {duration((total - n) / rate)}")
        return ", ".join(parts)

    def _write(self, final: bool) -> None:
        self.fp.write(self.line(final) + "\n")
        self.fp.flush()

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm clearing its bar: a written line needs no clearing
            return False
        # Only with progress since the last line (not before the first item), not at the end (the
        # closing line follows), and not before an interval has passed: tqdm's update() checks the
        # interval, but tqdm.write() refreshes every bar whenever it prints.
        ended = self.total is not None and self.n >= self.total
        if (self.n > max(self.initial, self.line_n) and not ended
                and self._time() - self.last_print_t >= self.mininterval):
            self._write(final=False)
            self.last_print_t, self.line_n, self.shown = self._time(), self.n, True
        return True

    def clear(self, nolock=False):
        pass  # nothing to erase

    def moveto(self, n):
        pass  # lines are never moved over

    def close(self):
        if getattr(self, "disable", True):
            return
        # A phase left by an error gets no closing line, so the error stays the last line: a loop
        # left early closes its generator with GeneratorExit; `with` passes the exception; a bar
        # only garbage-collected was never closed by its owner.
        abandoned = self.abandoned or isinstance(sys.exc_info()[1], GeneratorExit)
        if not abandoned and not (self.transient and not self.shown):
            self._write(final=True)
        super().close()

    def __exit__(self, exc_type, exc_value, traceback):
        self.abandoned = self.abandoned or exc_type is not None
        return super().__exit__(exc_type, exc_value, traceback)

    def __del__(self):
        self.abandoned = True
        super().__del__()


@functools.cache
def _callback_class():
    # transformers is imported only for training: rendering or media checks need not load it.
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        """Optimizer steps as `progress` (`train: step k/N, ...` lines outside a terminal) and every
        log record on stdout, on the main process."""

        def __init__(self, file: TextIO | None = None, interval: float | None = None, max_str_len: int = 100):
            self.file, self.interval, self.max_str_len = file, interval, max_str_len
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                # A resumed run starts at its checkpoint's step: the rate and ETA count this run's steps.
                self.bar = progress(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                    file=self.file, interval=self.interval)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            shown = {}
            for k, v in logs.items():
                if k == "total_flos":
                    continue
                if isinstance(v, str) and len(v) > self.max_str_len:
                    v = f"[{len(v)} characters]"
                shown[k] = f"{v:.4g}" if isinstance(v, float) else v
            # tqdm.write keeps a terminal bar below the record; flushed, so a log file has the
            # records and the progress lines (stderr) in order.
            tqdm.write(str(shown), file=sys.stdout)
            sys.stdout.flush()

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainingProgress


def training_progress(file: TextIO | None = None, interval: float | None = None):
    """The Trainer callback showing training progress (see `progress`)."""
    return _callback_class()(file, interval)
