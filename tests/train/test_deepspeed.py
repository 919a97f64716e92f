"""DeepSpeed: `resolve_deepspeed`, per-device configs, the accelerate CPU shim, and real HF Trainer runs.

The Trainer runs happen in subprocesses so that the accelerate patch, the torch.distributed env and
accelerate's process-wide state do not leak into the rest of the suite. The first DeepSpeed run on a
machine JIT-compiles `deepspeed_shm_comm` (~25-60 s) into <repo>/.cache/torch_extensions; after that
each run takes ~6-8 s (single process) or ~11 s (2 processes) on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnimem_train.errors import ConfigError
from omnimem_train.train import deepspeed as ods
from omnimem_train.train.deepspeed import (
    RECIPE_DIR,
    accelerate_cpu_backend,
    deepspeed_config_for_device,
    ensure_single_process_dist_env,
    patch_accelerate_cpu_backend,
    precision_args,
    resolve_deepspeed,
)

REPO = Path(__file__).resolve().parents[2]
DIST_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------------------------
# resolve_deepspeed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "  ", "none", "None"])
def test_resolve_none(value):
    assert resolve_deepspeed(value) is None


@pytest.mark.parametrize("name", ["zero2", "zero3", "ZeRO3"])
def test_resolve_short_names(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # independent of the current directory
    path = Path(resolve_deepspeed(name))
    assert path.is_absolute() and path.is_file()
    assert path == REPO / "recipes" / "deepspeed" / f"{name.lower()}.json"
    assert path.parent == RECIPE_DIR
    stage = json.loads(path.read_text())["zero_optimization"]["stage"]
    assert stage == int(name[-1])


def test_resolve_absolute_and_cwd_relative_path(tmp_path, monkeypatch):
    cfg = tmp_path / "my_ds.json"
    cfg.write_text('{"zero_optimization": {"stage": 1}}')
    assert resolve_deepspeed(str(cfg)) == str(cfg.resolve())
    monkeypatch.chdir(tmp_path)
    assert resolve_deepspeed("my_ds.json") == str(cfg.resolve())


def test_resolve_relative_to_recipe_dir(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    (recipes / "ds").mkdir(parents=True)
    cfg = recipes / "ds" / "custom.json"
    cfg.write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_deepspeed("ds/custom.json", recipe_dir=recipes) == str(cfg.resolve())
    # cwd wins over recipe_dir
    (elsewhere / "ds").mkdir()
    (elsewhere / "ds" / "custom.json").write_text("{}")
    assert resolve_deepspeed("ds/custom.json", recipe_dir=recipes) == str((elsewhere / "ds" / "custom.json").resolve())


def test_resolve_unknown_name_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve_deepspeed("zero4")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("deepspeed:")
    assert "'zero4'" in msg and "zero2" in msg and "zero3" in msg


def test_resolve_missing_file_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve_deepspeed("configs/ds.json", recipe_dir=tmp_path / "r")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("deepspeed:") and "configs/ds.json" in msg and "zero2, zero3" in msg


def test_resolve_invalid_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError) as info:
        resolve_deepspeed(str(bad))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("deepspeed:") and str(bad) in msg and "not valid JSON" in msg

    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        resolve_deepspeed(str(not_object))


# --------------------------------------------------------------------------------------------
# shipped configs and per-device precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_shipped_configs_are_trainer_style(name):
    cfg = json.loads((RECIPE_DIR / f"{name}.json").read_text())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert cfg[key] == "auto", key
    assert cfg["bf16"]["enabled"] == "auto" and cfg["fp16"]["enabled"] == "auto"
    assert "optimizer" not in cfg and "scheduler" not in cfg  # client optimizer: no fused_adam JIT build
    if name == "zero3":
        assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_config_for_device(name):
    path = resolve_deepspeed(name)
    cpu = deepspeed_config_for_device(path, on_gpu=False)
    assert cpu["bf16"]["enabled"] is False and cpu["fp16"]["enabled"] is False
    assert precision_args(cpu) == {"bf16": False, "fp16": False}
    gpu = deepspeed_config_for_device(path, on_gpu=True)
    assert gpu["bf16"]["enabled"] is True and gpu["fp16"]["enabled"] is False
    assert precision_args(gpu) == {"bf16": True, "fp16": False}
    # a fresh dict each call (the Trainer fills "auto" values in place)
    gpu["zero_optimization"]["stage"] = 0
    assert deepspeed_config_for_device(path, on_gpu=True)["zero_optimization"]["stage"] == int(name[-1])


def test_config_for_device_hidden_size_and_explicit_values(tmp_path):
    z3 = deepspeed_config_for_device(resolve_deepspeed("zero3"), on_gpu=False, hidden_size=10)
    zero = z3["zero_optimization"]
    assert zero["reduce_bucket_size"] == 100
    assert zero["stage3_prefetch_bucket_size"] == 90
    assert zero["stage3_param_persistence_threshold"] == 100
    # explicit values in a user's file are kept on GPU, forced off on CPU
    user = tmp_path / "user.json"
    user.write_text('{"bf16": {"enabled": false}, "fp16": {"enabled": true}, "zero_optimization": {"stage": 2}}')
    gpu = deepspeed_config_for_device(user, on_gpu=True, hidden_size=10)
    assert precision_args(gpu) == {"bf16": False, "fp16": True}
    assert "reduce_bucket_size" not in gpu["zero_optimization"]
    assert precision_args(deepspeed_config_for_device(user, on_gpu=False)) == {"bf16": False, "fp16": False}


# --------------------------------------------------------------------------------------------
# environment helpers
# --------------------------------------------------------------------------------------------


def test_ensure_single_process_dist_env(monkeypatch):
    for key in DIST_KEYS:
        monkeypatch.delenv(key, raising=False)
    values = ensure_single_process_dist_env()
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536
    assert set(values) == {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    # a second call (or a launcher's env) changes nothing
    monkeypatch.setenv("RANK", "1")
    assert ensure_single_process_dist_env() == {}
    assert os.environ["RANK"] == "1"


def test_ensure_single_process_dist_env_respects_partial_env(monkeypatch):
    for key in DIST_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_PORT", "12345")
    assert ensure_single_process_dist_env() == {}
    assert "RANK" not in os.environ


def test_default_extensions_dir(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert ods.default_extensions_dir() == str(REPO / ".cache" / "torch_extensions")
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(REPO / ".cache" / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/else")
    assert ods.default_extensions_dir() == "/somewhere/else"


# --------------------------------------------------------------------------------------------
# the accelerate shim
# --------------------------------------------------------------------------------------------


def unpatch_accelerate_cpu_backend() -> None:
    """Restore accelerate's original ``PartialState._prepare_backend``."""
    from accelerate.state import PartialState

    current = PartialState.__dict__["_prepare_backend"]
    while getattr(current, ods._SHIM_MARK, False):
        current = current.__wrapped__
    PartialState._prepare_backend = current


def is_accelerate_cpu_backend_patched() -> bool:
    from accelerate.state import PartialState

    return bool(getattr(PartialState.__dict__["_prepare_backend"], ods._SHIM_MARK, False))


@pytest.fixture
def shim_env(monkeypatch):
    """LOCAL_RANK=0 + ACCELERATE_USE_DEEPSPEED=true; the patch is undone afterwards."""
    from accelerate.state import PartialState

    original = PartialState.__dict__["_prepare_backend"]
    for key in DIST_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    yield original
    unpatch_accelerate_cpu_backend()
    assert PartialState.__dict__["_prepare_backend"] is original


needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the shim is a no-op where CUDA exists")


@needs_no_cuda
def test_shim_picks_gloo_for_deepspeed_on_cpu(shim_env, monkeypatch):
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state_like = object()
    assert PartialState._prepare_backend(state_like, cpu=False) == (None, DistributedType.NO)  # the bug
    assert patch_accelerate_cpu_backend() is True
    assert is_accelerate_cpu_backend_patched()
    assert PartialState._prepare_backend(state_like, cpu=False) == ("gloo", DistributedType.MULTI_CPU)
    assert PartialState._prepare_backend(state_like, False, False, "gloo") == ("gloo", DistributedType.MULTI_CPU)

    # without ACCELERATE_USE_DEEPSPEED, or without LOCAL_RANK: the original result
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert PartialState._prepare_backend(state_like, cpu=False) == (None, DistributedType.NO)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert PartialState._prepare_backend(state_like, cpu=False) == (None, DistributedType.NO)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.delenv("LOCAL_RANK")
    assert PartialState._prepare_backend(state_like, cpu=False) == (None, DistributedType.NO)
    # cpu=True keeps accelerate's own MULTI_CPU logic (plain DDP on CPU), untouched
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert PartialState._prepare_backend(state_like, cpu=True) == shim_env(state_like, cpu=True)


@needs_no_cuda
def test_shim_idempotent_and_unpatch(shim_env):
    from accelerate.state import PartialState

    original = shim_env
    assert patch_accelerate_cpu_backend() is True
    patched = PartialState.__dict__["_prepare_backend"]
    assert patched is not original and patched.__wrapped__ is original
    assert patch_accelerate_cpu_backend() is True
    assert PartialState.__dict__["_prepare_backend"] is patched  # no double wrap
    unpatch_accelerate_cpu_backend()
    assert PartialState.__dict__["_prepare_backend"] is original
    assert not is_accelerate_cpu_backend_patched()
    unpatch_accelerate_cpu_backend()  # harmless when not patched
    assert PartialState.__dict__["_prepare_backend"] is original


@needs_no_cuda
def test_training_setup_leaves_accelerate_unpatched_outside_the_training_block(shim_env, monkeypatch, tmp_path):
    """Importing train.run and `_setup_environment` patch nothing; `accelerate_cpu_backend` patches
    for its block only and restores accelerate on exit, also after an error."""
    from types import SimpleNamespace

    from accelerate.state import PartialState

    from omnimem_train.train import run

    # a launcher-less world, and the env vars it sets stay in this test
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in DIST_KEYS})
    run._setup_environment(SimpleNamespace(output_dir=str(tmp_path), deepspeed="zero2"))
    assert os.environ["WORLD_SIZE"] == "1" and not is_accelerate_cpu_backend_patched()
    with accelerate_cpu_backend(enabled=False):
        assert not is_accelerate_cpu_backend_patched()
    with pytest.raises(RuntimeError), accelerate_cpu_backend():
        assert is_accelerate_cpu_backend_patched()
        raise RuntimeError("training failed")
    assert PartialState.__dict__["_prepare_backend"] is shim_env


def test_shim_noop_with_cuda(shim_env, monkeypatch):
    from accelerate.state import PartialState

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert patch_accelerate_cpu_backend() is False
    assert PartialState.__dict__["_prepare_backend"] is shim_env


# --------------------------------------------------------------------------------------------
# real HF Trainer + DeepSpeed runs (subprocesses)
# --------------------------------------------------------------------------------------------

TRAIN_SCRIPT = r'''
import json, os, sys
from omnimem_train.train.deepspeed import (deepspeed_config_for_device, default_extensions_dir,
    ensure_single_process_dist_env, patch_accelerate_cpu_backend, precision_args, resolve_deepspeed)

default_extensions_dir()
ensure_single_process_dist_env()  # no-op under torchrun
assert patch_accelerate_cpu_backend()

import torch
from torch import nn
from transformers import Trainer, TrainingArguments


class Tiny(nn.Module):  # no .config -> hidden_size passed to deepspeed_config_for_device
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, x, labels):
        return {"loss": nn.functional.mse_loss(self.lin(x).squeeze(-1), labels)}


torch.manual_seed(0)
data = [{"x": torch.randn(8), "labels": torch.randn(())} for _ in range(8)]
name, out = sys.argv[1], sys.argv[2]
cfg = deepspeed_config_for_device(resolve_deepspeed(name), on_gpu=False, hidden_size=8)
args = TrainingArguments(output_dir=out, deepspeed=cfg, use_cpu=False, per_device_train_batch_size=1,
                         report_to=[], max_steps=2, logging_steps=1, save_strategy="no", disable_tqdm=True,
                         **precision_args(cfg))
model = Tiny()
before = model.lin.weight.detach().clone()
trainer = Trainer(model=model, args=args, train_dataset=data)
result = trainer.train()
trainer.save_model(out)
state = trainer.accelerator.state
print("RESULT " + json.dumps({
    "rank": int(os.environ["RANK"]), "world": state.num_processes, "distributed_type": str(state.distributed_type),
    "backend": state.backend, "steps": result.global_step, "loss": result.training_loss,
    "zero_stage": trainer.deepspeed.zero_optimization_stage(),
}), flush=True)
from omnimem_train.train.deepspeed import shutdown_distributed
shutdown_distributed()
'''


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in DIST_KEYS and not k.startswith(("ACCELERATE_", "TORCHELASTIC_"))}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(cmd: list[str], tmp_path: Path) -> list[dict]:
    proc = subprocess.run(cmd, cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line]


def _check_saved(out: Path) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert weights["lin.weight"].shape == (1, 8)  # real weights, also under ZeRO-3
    assert weights["lin.bias"].shape == (1,)


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_trainer_deepspeed_single_process(name, tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / "out"
    (result,) = _run([sys.executable, str(script), name, str(out)], tmp_path)
    assert result["world"] == 1 and result["steps"] == 2
    assert result["distributed_type"] == "DistributedType.DEEPSPEED"
    assert result["backend"] == "gloo"  # the shim picked it (accelerate alone leaves None)
    assert result["zero_stage"] == int(name[-1])
    _check_saved(out)


def test_trainer_deepspeed_two_processes_torchrun(tmp_path):
    """The case the shim exists for: without it HF Trainer asserts `1 != 1 * 1 * 2` on the batch size."""
    script = tmp_path / "train_tiny.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(ods.free_port()), str(script), "zero2", str(out)]
    results = sorted(_run(cmd, tmp_path), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["world"] == 2 and r["steps"] == 2 and r["backend"] == "gloo"
    assert results[0]["loss"] == pytest.approx(results[1]["loss"])
    _check_saved(out)
