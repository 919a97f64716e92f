"""`omnimem-train train` with its output captured (not a terminal): the steps are plain
`train: step k/N` lines (not transformers' `\\r` bar), and the log records still reach stdout."""

import re

from omnimem_train.commands.cli import main
from omnimem_train.utils.progress import INTERVAL_ENV

RECIPE = "recipes/train/tiny_cpu.yaml"


def test_training_prints_step_lines(tiny_manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    code = main(["train", RECIPE, f"dataset={tiny_manifest}", f"output_dir={tmp_path / 'run'}", "report_to=none",
                 "per_device_train_batch_size=1", "memory.group_size=16", "memory.budget=20", "max_steps=3",
                 "logging_steps=1", "save_steps=100"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # split on newlines only: a line holding a `\r` redraw would not match whole
    steps = [x for x in err.split("\n") if x.startswith("train: step ")]
    assert [re.fullmatch(r"train: step (\d)/3, [\d.]+ (steps/s|s/step), ETA \d+ s", x).group(1)
            for x in steps[:-1]] == ["1", "2"], err
    assert re.fullmatch(r"train: step 3/3, [\d.]+ (steps/s|s/step), done in \d+ s", steps[-1]), err
    assert len(re.findall(r"\{'loss': ", out)) == 3, out  # one record per logging step
