"""Export from a ZeRO-3 checkpoint of a real two-process `./launch.sh` run: with its gathered adapter
file, and consolidated from the DeepSpeed `global_step*` shards when that file is missing or holds
only empty tensors; the shards are unpickled with weights_only=True."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnimem_train.commands.cli import main
from omnimem_train.errors import ModelError
from omnimem_train.export.zero import consolidate, weights_only_torch_load
from omnimem_train.models.load import load_adapter
from tests.export.runs import peft_reference, text_logits

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zero3_checkpoint(export_manifest, tmp_path_factory, omnimem_home):
    """checkpoint-1 of a 1-step, 2-process ZeRO-3 LoRA run (about 35-70 s on 2 cores)."""
    out = tmp_path_factory.mktemp("zero3") / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED")}
    env.update(NPROC_PER_NODE="2", NUM_GPUS="0", MASTER_PORT=str(31500 + (os.getpid() % 2000)),
               PYTHON=sys.executable, OMNIMEM_HOME=omnimem_home)
    cmd = ["bash", "launch.sh", "recipes/train/tiny_cpu.yaml", "deepspeed=zero3", f"dataset={export_manifest}",
           f"output_dir={out}", "report_to=none", "max_steps=1", "save_steps=1", "per_device_train_batch_size=1",
           "learning_rate=1e-2", "memory.group_size=16", "memory.budget=20"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    ckpt = out / "checkpoint-1"
    assert (ckpt / "global_step1").is_dir()
    return ckpt


def _without_adapter(ckpt: Path, dst: Path, empty: bool) -> Path:
    """A copy of `ckpt` whose adapter file is gone, or holds 0-element tensors (ZeRO-3 placeholders)."""
    shutil.copytree(ckpt, dst)
    adapter = dst / "adapter_model.safetensors"
    if empty:
        save_file({k: torch.empty(0) for k in load_file(str(adapter))}, str(adapter))
    else:
        adapter.unlink()
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gathered", "missing", "empty"])
def test_zero3_checkpoint_exports(zero3_checkpoint, tmp_path, capsys, case):
    src = zero3_checkpoint if case == "gathered" else _without_adapter(zero3_checkpoint, tmp_path / "ckpt",
                                                                         empty=case == "empty")
    out = tmp_path / "merged"
    assert main(["export", str(src), "--output", str(out)]) == 0
    log = capsys.readouterr().out
    record = json.loads((out / "omnimem_export.json").read_text())
    if case == "gathered":
        assert record["method"] == "lora-merge" and "consolidated" not in log
    else:
        assert record["method"] == "zero-consolidated" and record["consolidated_from"].endswith("global_step1")
        reason = "empty (0-element) tensors" if case == "empty" else "adapter_model.safetensors is missing"
        assert f"consolidated from DeepSpeed shards {src / 'global_step1'} (" in log and reason in log
    # Every path gives base + the trained adapter (the gathered file is the reference).
    ref = peft_reference("builtin:tiny-omni", zero3_checkpoint)
    assert (text_logits(ref) - text_logits(load_adapter(str(out), "float32", "cpu"))).abs().max() <= 1e-4
    assert json.loads((out / "omnimem_memory.json").read_text()) == json.loads(
        (zero3_checkpoint / "omnimem_memory.json").read_text())


@pytest.mark.slow
def test_consolidation_refuses_unsafe_pickles(zero3_checkpoint, tmp_path):
    real_load = torch.load
    state = consolidate(zero3_checkpoint / "global_step1", trainable_only=True)
    assert state and all("lora_" in k and not k.startswith("inner.") for k in state)
    assert torch.load is real_load  # the weights_only patch is scoped
    bad = _without_adapter(zero3_checkpoint, tmp_path / "bad", empty=False)
    shard = next((bad / "global_step1").glob("*optim_states.pt"))
    torch.save({"payload": os.system}, shard)  # a global no weights_only unpickler may resolve
    with pytest.raises(ModelError, match=rf"(?i){shard.name}: refusing to unpickle.*unsupported global"):
        consolidate(bad / "global_step1", trainable_only=True)
    assert torch.load is real_load


def test_weights_only_patch_is_restored_after_an_error():
    real_load = torch.load
    with pytest.raises(RuntimeError), weights_only_torch_load():
        assert torch.load is not real_load
        raise RuntimeError("boom")
    assert torch.load is real_load
