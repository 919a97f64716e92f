"""Export of the video-SALMONN 2+ family (both built-ins): train -> export -> reload gives the logits of
base + adapter (LoRA, and the Q-Former / audio projection trained through `lora_modules_to_save`)
within 1e-4, on text and on an audio-visual stream, with the merged checkpoint in the base's own key
layout (`audio.*` / `visual.*` / `model.*` for video-SALMONN 2+, `model.audio.*` / `model.visual.*` /
`model.language_model.*` for Qwen3-VL); the probe fits each model and carries DeepStack; a
two-process ZeRO-3 run exports from its gathered adapter and from its shards."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omnimem_train.config import load_config
from omnimem_train.export import export_run
from omnimem_train.export.run import base_folder
from omnimem_train.export.verify import probe_logits, probe_media
from omnimem_train.media.features import LogMelExtractor
from omnimem_train.memory.policies.full import FullMemory
from omnimem_train.models.base import MediaInput
from omnimem_train.models.load import load_adapter, tensor_shapes
from omnimem_train.streaming.engine import StreamingEngine
from tests.export.runs import peft_reference, text_logits

ROOT = Path(__file__).resolve().parents[2]
RECIPE = {"tiny-vsalmonn2plus": "recipes/train/tiny_vsalmonn2plus.yaml",
          "tiny-omnimem-qwen3vl": "recipes/train/tiny_omnimem_qwen3vl.yaml"}
# The base's saved top-level key groups (the release layouts).
LAYOUT = {"tiny-vsalmonn2plus": {"audio", "visual", "model", "lm_head"},
          "tiny-omnimem-qwen3vl": {"model.audio", "model.visual", "model.language_model", "lm_head"}}
RUNS = {  # (built-in, compression, lora_modules_to_save)
    "vsalmonn2plus-lora": ("tiny-vsalmonn2plus", "streaming", "[]"),
    "vsalmonn2plus-qformer": ("tiny-vsalmonn2plus", "none", "[qformer,audio_proj]"),
    "qwen3vl-lora": ("tiny-omnimem-qwen3vl", "none", "[]"),
    "qwen3vl-qformer": ("tiny-omnimem-qwen3vl", "streaming", "[qformer,audio_proj]"),
}


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request, tmp_path_factory, export_manifest, omnimem_home):
    """(built-in, run folder, modules_to_save) of a real 2-step `run_training` LoRA run."""
    from omnimem_train.train.run import run_training

    name, compression, saved = RUNS[request.param]
    out = tmp_path_factory.mktemp(request.param) / "run"
    cfg = load_config(RECIPE[name], [f"dataset={export_manifest}", f"output_dir={out}", "report_to=none",
                                     "per_device_train_batch_size=2", "max_steps=2", "save_steps=2",
                                     "learning_rate=1e-2", "memory.budget=6", f"compression={compression}",
                                     f"lora_modules_to_save={saved}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIMEM_HOME", omnimem_home)
        run_training(cfg)
    return name, out, saved != "[]"


def _media(ad, seed=5) -> MediaInput:
    """3 s of seeded frames (sides twice the model's frame multiple) and a rising tone."""
    rng = np.random.default_rng(seed)
    fm = ad.frame_multiple
    frames = rng.integers(0, 256, (6, 2 * fm, 2 * fm, 3), dtype=np.uint8)
    t = np.arange(48000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)
    return MediaInput(frames=iter(list(frames)), fps=2.0, mel_windows=LogMelExtractor().iter_windows(wave),
                      duration_s=3.0)


def _group(name: str, key: str) -> str:
    """`audio` / `visual` / `model` / `lm_head` (video-SALMONN 2+), `model.audio` / ... (Qwen3-VL)."""
    parts = key.split(".")
    return parts[0] if name == "tiny-vsalmonn2plus" or parts[0] == "lm_head" else ".".join(parts[:2])


@torch.no_grad()
def stream_logits(ad) -> torch.Tensor:
    """Logits of an audio-visual stream through the streaming engine (no export code involved)."""
    prefix = ad.tokenizer("You watch and listen.", add_special_tokens=False)["input_ids"]
    _, logits = StreamingEngine(ad, FullMemory(), group_size=11).prefill(ad.stream(_media(ad), prefix),
                                                                           collect_logits=True)
    return logits


def test_export_reloads_as_base_plus_adapter_in_the_base_key_layout(trained, tmp_path):
    name, run, saved = trained
    out = tmp_path / "merged"
    record = export_run(run, out, log=lambda _: None)
    assert record["method"] == "lora-merge" and record["verification"]["max_abs_logit_diff"] <= 1e-4

    # The same tensors, names and shapes as the base checkpoint: the release's key layout.
    shapes = {}
    for f in sorted(out.glob("*.safetensors")):
        shapes.update(tensor_shapes(f))
    base_shapes = {}
    for f in sorted(base_folder(f"builtin:{name}").glob("*.safetensors")):
        base_shapes.update(tensor_shapes(f))
    assert shapes == base_shapes
    assert {_group(name, k) for k in shapes} == LAYOUT[name]

    exported = load_adapter(str(out), "float32", "cpu")
    reference = peft_reference(f"builtin:{name}", run)  # peft's own loader on the base
    base = load_adapter(f"builtin:{name}", "float32", "cpu")
    for logits in (text_logits, stream_logits):
        ref, got = logits(reference), logits(exported)
        assert (ref - got).abs().max() <= 1e-4, logits.__name__
        assert (logits(base) - got).abs().max() > 1e-3, logits.__name__  # training changed the model
    mel = next(iter(LogMelExtractor().iter_windows(np.sin(np.arange(32000) / 7).astype(np.float32))))
    with torch.no_grad():
        audio_ref, audio_got = reference.encode_audio_windows([mel]), exported.encode_audio_windows([mel])
        audio_base = base.encode_audio_windows([mel])
    assert (audio_ref - audio_got).abs().max() <= 1e-5
    # The audio bridge changed exactly when its Q-Former and projection were trained.
    assert ((audio_base - audio_got).abs().max() > 1e-4) == saved
    if saved:
        adapter_file = load_file(str(run / "adapter_model.safetensors"))
        bridge = "audio" if name == "tiny-vsalmonn2plus" else "model.audio"
        trained_proj = adapter_file[f"base_model.model.{bridge}.audio_proj.weight"]
        merged = load_file(str(out / "model.safetensors"))
        assert torch.equal(merged[f"{bridge}.audio_proj.weight"], trained_proj)


@pytest.mark.parametrize("name", list(RECIPE))
def test_probe_fits_the_model_and_carries_deepstack(name, monkeypatch, omnimem_home):
    monkeypatch.setenv("OMNIMEM_HOME", omnimem_home)
    ad = load_adapter(f"builtin:{name}", "float32", "cpu")
    media = probe_media(ad)
    frames = list(media.frames)
    assert {f.shape for f in frames} == {(2 * ad.frame_multiple, 2 * ad.frame_multiple, 3)}
    assert next(media.mel_windows).shape == (128, 200)
    with_adds = probe_logits(ad)
    assert torch.equal(with_adds, probe_logits(ad))  # deterministic
    monkeypatch.setattr(type(ad), "adding_after_layers", lambda self, adds: contextlib.nullcontext())
    without = probe_logits(ad)
    # Qwen3-VL's DeepStack features are part of the probe; Qwen2.5-VL has none.
    assert ((with_adds - without).abs().max() > 1e-4) == (name == "tiny-omnimem-qwen3vl")


@pytest.fixture(scope="module", params=["tiny-vsalmonn2plus", "tiny-omnimem-qwen3vl"])
def zero3_run(request, export_manifest, tmp_path_factory, omnimem_home):
    """(built-in, checkpoint-1) of a 1-step, 2-process ZeRO-3 run, LoRA plus the Q-Former and audio
    projection (about 40-70 s on 2 cores each)."""
    name = request.param
    out = tmp_path_factory.mktemp(f"zero3_{name}") / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED")}
    env.update(NPROC_PER_NODE="2", NUM_GPUS="0", MASTER_PORT=str(33500 + (os.getpid() % 2000)),
               PYTHON=sys.executable, OMNIMEM_HOME=omnimem_home)
    cmd = ["bash", "launch.sh", RECIPE[name], "deepspeed=zero3", f"dataset={export_manifest}",
           f"output_dir={out}", "report_to=none", "max_steps=1", "save_steps=1", "per_device_train_batch_size=1",
           "learning_rate=1e-2", "memory.budget=6", "lora_modules_to_save=[qformer,audio_proj]"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "--num_gpus 2" in run.stdout + run.stderr
    ckpt = out / "checkpoint-1"
    assert (ckpt / "global_step1").is_dir()
    adapter = load_file(str(ckpt / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 for v in adapter.values())  # ZeRO-3 gathered real weights
    assert any(".qformer." in k for k in adapter) and any(".audio_proj." in k for k in adapter)
    return name, ckpt


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gathered", "consolidated"])
def test_zero3_checkpoint_exports_base_plus_adapter(zero3_run, tmp_path, case):
    name, ckpt = zero3_run
    src = ckpt
    if case == "consolidated":  # no adapter file: the weights come from the DeepSpeed shards
        src = tmp_path / "ckpt"
        shutil.copytree(ckpt, src)
        (src / "adapter_model.safetensors").unlink()
    out = tmp_path / "merged"
    record = export_run(src, out, log=lambda _: None)
    assert record["method"] == ("lora-merge" if case == "gathered" else "zero-consolidated")
    exported = load_adapter(str(out), "float32", "cpu")
    reference = peft_reference(f"builtin:{name}", ckpt)  # the gathered adapter file
    for logits in (text_logits, stream_logits):
        assert (logits(reference) - logits(exported)).abs().max() <= 1e-4, logits.__name__
    base_keys = set(tensor_shapes(base_folder(f"builtin:{name}") / "model.safetensors"))
    assert set(tensor_shapes(out / "model.safetensors")) == base_keys
    assert json.loads((out / "omnimem_memory.json").read_text()) == json.loads(
        (ckpt / "omnimem_memory.json").read_text())


def test_full_finetune_with_the_audio_tower_exports_in_the_base_layout(export_manifest, omnimem_home, tmp_path,
                                                                       monkeypatch):
    """Full fine-tuning of Qwen3-VL's LLM and audio bridge (`train_encoders: audio`): the export holds
    the trained weights in the base's key layout; the frozen vision tower is the base's, bit for bit."""
    from omnimem_train.train.run import run_training

    monkeypatch.setenv("OMNIMEM_HOME", omnimem_home)
    name, run = "tiny-omnimem-qwen3vl", tmp_path / "run"
    run_training(load_config(RECIPE[name], [f"dataset={export_manifest}", f"output_dir={run}", "report_to=none",
                                            "finetuning_type=full", "train_encoders=audio", "compression=none",
                                            "per_device_train_batch_size=2", "max_steps=2", "save_steps=2",
                                            "learning_rate=1e-3"]))
    record = export_run(run, tmp_path / "merged", log=lambda _: None)
    assert record["method"] == "full" and record["verification"]["max_abs_logit_diff"] <= 1e-4
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    base = load_file(str(base_folder(f"builtin:{name}") / "model.safetensors"))
    assert merged.keys() == base.keys()
    changed = {_group(name, k) for k in merged if not torch.equal(merged[k], base[k])}
    assert changed == {"model.audio", "model.language_model", "lm_head"}  # the vision tower stayed frozen
    trained_model = load_adapter(str(run), "float32", "cpu")  # the run folder's own weights
    exported = load_adapter(str(tmp_path / "merged"), "float32", "cpu")
    assert (stream_logits(trained_model) - stream_logits(exported)).abs().max() <= 1e-4
