"""config.runs: whether a folder holds a finished run of a given config."""

import os

from omnimem_train.config import load_config, save_config
from omnimem_train.config.runs import is_finished_run, same_config


def _finished_run(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    save_config(cfg, tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "predictions.jsonl").write_text("")
    return cfg


def test_finished(tmp_path):
    cfg = _finished_run(tmp_path)
    assert is_finished_run(cfg, tmp_path, ["metrics.json", "predictions.jsonl"])
    assert is_finished_run(cfg, str(tmp_path), [])  # no result files: the saved config alone


def test_config_differs_not_finished(tmp_path):
    cfg = _finished_run(tmp_path)
    other = load_config(None, [f"output_dir={tmp_path}", "seed=1234"])
    assert not is_finished_run(other, tmp_path, ["metrics.json"])
    moved = load_config(None, [f"output_dir={tmp_path / 'elsewhere'}"])
    assert not is_finished_run(moved, tmp_path, ["metrics.json"])
    assert is_finished_run(moved, tmp_path, ["metrics.json"], ignore=["output_dir"])
    assert same_config(cfg, tmp_path) and not same_config(other, tmp_path)
    (tmp_path / "config.yaml").write_text("not: [valid")  # unreadable: never the same config
    assert not is_finished_run(cfg, tmp_path, ["metrics.json"])


def test_result_older_than_config_not_finished(tmp_path):
    cfg = _finished_run(tmp_path)
    os.utime(tmp_path / "metrics.json", ns=(1, 1))  # a re-run rewrote config.yaml after this result
    assert not is_finished_run(cfg, tmp_path, ["metrics.json", "predictions.jsonl"])
    assert is_finished_run(cfg, tmp_path, ["predictions.jsonl"])


def test_missing_file_not_finished(tmp_path):
    cfg = _finished_run(tmp_path)
    assert not is_finished_run(cfg, tmp_path, ["metrics.json", "train_results.json"])
    (tmp_path / "config.yaml").unlink()
    assert not is_finished_run(cfg, tmp_path, ["metrics.json"])
    assert not is_finished_run(cfg, tmp_path / "missing", [])
