"""`utils.progress`: a tqdm bar in a terminal; elsewhere plain lines, at most one per interval, with
done/total, a rate and an ETA, and a closing line; the training callback prints `step k/N` lines."""

import io
import re
from types import SimpleNamespace

import pytest
import tqdm.std

from omnimem_train.errors import ConfigError
from omnimem_train.utils.progress import INTERVAL_ENV, duration, line_interval, progress, training_progress

LINE = re.compile(r"^work: item (\d+)/20, [\d.]+ (items/s|s/item), ETA (\d+ s|\d+ min \d\d s)$")


class Clock:
    """A fake clock for tqdm: it moves only when told."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(tqdm.std, "time", c)  # tqdm reads its clock from this name
    return c


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(clock, n=20, seconds_per_item=1.0, **kw):
    out = io.StringIO()
    for _ in progress(range(n), desc="work", unit="item", file=out, **kw):
        clock.t += seconds_per_item
    return out.getvalue()


def test_not_a_terminal_writes_one_line_per_interval_and_a_closing_line(clock):
    text = _run(clock, interval=5)
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # 20 items, 1 s each, 5 s interval: a line at items 5, 10, 15, and the closing one at 20
    assert [int(LINE.match(x).group(1)) for x in lines[:-1]] == [5, 10, 15], lines
    assert "work: item 5/20, 1.0 items/s, ETA 15 s" == lines[0]
    assert lines[-1] == "work: item 20/20, 1.0 items/s, done in 20 s"


def test_at_most_one_line_per_interval(clock):
    out = io.StringIO()
    bar = progress(total=100, desc="work", unit="item", file=out, interval=10)
    times = []
    for _ in range(100):
        clock.t += 0.7
        before = out.getvalue().count("\n")
        bar.update()
        if out.getvalue().count("\n") > before:
            times.append(clock.t)
    bar.close()
    assert len(times) == 6 and all(b - a >= 10 for a, b in zip(times, times[1:])), times
    assert out.getvalue().splitlines()[-1].startswith("work: item 100/100, 1.4 items/s, done in 1 min 10 s")


def test_a_long_interval_leaves_only_the_closing_line(clock):
    assert _run(clock, interval=3600).splitlines() == ["work: item 20/20, 1.0 items/s, done in 20 s"]


def test_slow_items_show_seconds_per_item_and_the_eta(clock):
    line = _run(clock, n=20, seconds_per_item=30.0, interval=100).splitlines()[0]
    assert line == "work: item 4/20, 30.0 s/item, ETA 8 min 00 s"


def test_transient_phase_leaves_no_line_when_quick(clock):
    assert _run(clock, interval=3600, transient=True) == ""
    assert _run(clock, interval=5, transient=True).splitlines()[-1].endswith("done in 20 s")


def test_an_error_leaves_no_closing_line(clock):
    out = io.StringIO()
    with pytest.raises(ValueError):
        for i in progress(range(20), desc="work", unit="item", file=out, interval=3600):
            if i == 3:
                raise ValueError
    with pytest.raises(ValueError), progress(total=5, desc="work", file=out, interval=3600) as bar:
        bar.update()
        raise ValueError
    assert out.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch, clock):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert line_interval() == 10.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert line_interval() == 2.5
    lines = _run(clock).splitlines()  # 1 s per item: a line every third item, then the closing one
    assert [int(LINE.match(x).group(1)) for x in lines[:-1]] == [3, 6, 9, 12, 15, 18] and "done" in lines[-1]
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ConfigError, match=INTERVAL_ENV):
        line_interval()


def test_a_terminal_gets_a_tqdm_bar(clock):
    out = Terminal()
    for _ in progress(range(5), desc="work", unit="item", file=out, interval=3600):
        clock.t += 1
    text = out.getvalue()
    assert "\r" in text and "5/5" in text and "item/s" in text and "work: " in text


def test_duration():
    assert [duration(s) for s in (0.4, 53, 60, 125, 3720)] == ["0 s", "53 s", "1 min 00 s", "2 min 05 s",
                                                               "1 h 02 min"]


def _state(step, max_steps=10):
    return SimpleNamespace(is_world_process_zero=True, global_step=step, max_steps=max_steps)


def test_training_callback_prints_step_lines(clock, capsys):
    """The callback alone, driven as the Trainer drives it (a resumed run starting at step 2)."""
    from transformers import TrainerCallback

    err = io.StringIO()
    cb = training_progress(file=err, interval=5)
    assert isinstance(cb, TrainerCallback)
    cb.on_train_begin(None, _state(2), None)
    for step in range(3, 11):
        clock.t += 2
        cb.on_step_end(None, _state(step), None)
        if step == 6:
            cb.on_log(None, _state(step), None, logs={"loss": 1.23456, "total_flos": 9.0})
    cb.on_train_end(None, _state(10), None)
    assert err.getvalue().splitlines() == ["train: step 5/10, 2.0 s/step, ETA 10 s",
                                           "train: step 8/10, 2.0 s/step, ETA 4 s",
                                           "train: step 10/10, 2.0 s/step, done in 16 s"]
    assert capsys.readouterr().out == "{'loss': '1.235'}\n"
