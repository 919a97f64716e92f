"""Bad input to `omnimem-train export` is one `error:` line naming the folder or file, exit status 2,
and leaves no output behind."""

import shutil

import pytest

from omnimem_train.commands.cli import main


def _copy_run(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("merged*"))
    return run


def _error_line(capsys) -> str:
    """The one `error:` line (stderr may also hold transformers' progress bars), and no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and "Traceback" not in err, err
    return lines[0]


def _no_output(run):
    return not [p for p in run.iterdir() if p.name.startswith((".merged", "merged"))]


def test_adapter_for_a_different_base(lora_run, tmp_path, capsys):
    run = _copy_run(lora_run, tmp_path)
    assert main(["export", str(run), "--base", "builtin:testbed-omni"]) == 2  # hidden 128, not 64
    line = _error_line(capsys)
    assert f"{run / 'adapter_model.safetensors'}: tensor " in line and "expects (8, 128)" in line
    assert _no_output(run)


def test_missing_adapter_names_the_folder(lora_run, tmp_path, capsys):
    run = _copy_run(lora_run, tmp_path)
    (run / "adapter_model.safetensors").unlink()
    assert main(["export", str(run)]) == 2
    line = _error_line(capsys)
    assert f"error: {run}: adapter_model.safetensors is missing" in line and "checkpoint-2" in line
    assert _no_output(run)


def test_pickled_adapter_is_refused(lora_run, tmp_path, capsys):
    run = _copy_run(lora_run, tmp_path)
    (run / "adapter_model.safetensors").rename(run / "adapter_model.bin")
    assert main(["export", str(run)]) == 2
    assert f"{run / 'adapter_model.bin'}: pickled weights are not loaded" in _error_line(capsys)


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_not_a_run_folder(tmp_path, capsys, make):
    src = tmp_path / "src"
    if make == "empty":
        src.mkdir()
    elif make == "file":
        src.write_text("x")
    assert main(["export", str(src)]) == 2
    assert f"error: {src}: " in _error_line(capsys)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_safetensors_names_the_file(lora_run, tmp_path, capsys, damage):
    run = _copy_run(lora_run, tmp_path)
    f = run / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(range(256)) * 8)
    assert main(["export", str(run)]) == 2
    assert f"error: {f}: corrupted or unreadable safetensors file" in _error_line(capsys)
    assert _no_output(run)


def test_existing_export_needs_overwrite(lora_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "omnimem_export.json").write_text("{}")  # an earlier export
    assert main(["export", str(lora_run), "--output", str(out)]) == 2
    assert f"error: {out}: output already exists (pass --overwrite" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["omnimem_export.json"]


@pytest.mark.parametrize("args, needle", [
    (["--output", "{run}", "--overwrite"], "would replace the source"),
    (["--max-shard-size", "lots"], "--max-shard-size lots"),
    (["memory.budget=4"], "no key=value overrides"),
    (["--base", "builtin:nope"], "builtin:nope: unknown built-in model"),
])
def test_bad_options(lora_run, tmp_path, capsys, args, needle):
    run = _copy_run(lora_run, tmp_path)
    assert main(["export", str(run)] + [a.format(run=run) for a in args]) == 2
    assert needle in _error_line(capsys)
    assert (run / "adapter_model.safetensors").exists() and _no_output(run)
