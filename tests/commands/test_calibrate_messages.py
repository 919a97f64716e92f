"""`omnimem-train calibrate` says what its entropies are (and why they may all read 1.000) and warns
when the budgets it writes are more than the calibration streams hold."""

from omnimem_train.commands.calibrate import budget_warning, explain_stats
from omnimem_train.commands.cli import main
from omnimem_train.memory.calibrate import CalibrationStats

RECIPE = "recipes/calibrate/tiny_omni.yaml"


def _stats(entropy: float, samples: int = 2, audio: int = 300, visual: int = 192) -> CalibrationStats:
    e = {m: [entropy] * 4 for m in ("audio", "visual", "all")}
    c = {m: [0.5] * 4 for m in ("audio", "visual", "all")}
    return CalibrationStats(e, c, samples, {"text": 60, "audio": audio, "visual": visual})


def test_the_entropy_is_explained():
    text = explain_stats(_stats(0.9999))
    assert "log(" in text and "1 = attention spread evenly" in text
    assert "every E reads 1.000" in text and "random (untrained) weights" in text
    assert "reads 1.000" not in explain_stats(_stats(0.8))  # only said when it is so


def test_a_budget_above_what_the_streams_hold_is_warned_about():
    stats = _stats(0.9)  # 150 audio + 96 visual tokens per stream: 246 per layer, 984 over 4 layers
    layers = [[62, 534], [59, 479], [56, 439], [51, 368]]  # 2048 in all
    warning = budget_warning(stats, layers, 2048)
    assert warning.startswith("warning: calibration.total=2048 exceeds the 984 audio+visual tokens")
    assert "246 per layer)" in warning and "\n" not in warning
    assert "1436 of the 2048 stay unused" in warning and "keeps 62% of its tokens" in warning
    assert budget_warning(stats, [[20, 100]] * 4, 480) is None  # fits: every budget can fill
    assert "on average" in budget_warning(_stats(0.9, samples=2, audio=301), layers, 2048)


def test_the_demo_compresses_and_says_why_its_entropies_are_one(tmp_path, capsys):
    assert main(["calibrate", RECIPE, f"output_dir={tmp_path / 'demo'}"]) == 0
    out, err = capsys.readouterr()
    assert "every E reads 1.000" in out and "log(" in out  # the built-in tiny model has random weights
    assert "warning:" not in err  # the demo asks for budgets its clips fill
    assert main(["calibrate", RECIPE, f"output_dir={tmp_path / 'big'}", "calibration.total=2048",
                 "calibration.num_samples=1"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "calibration.total=2048 exceeds the 984 audio+visual tokens" in warnings[0]
