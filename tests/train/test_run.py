"""`omnimem-train train` in one process: it learns, only LoRA moves, checkpoints resume exactly,
wandb stays offline, and bad recipe values fail at start-up naming the key."""

import json

import pytest
import torch
from safetensors.torch import load_file

from omnimem_train.commands.cli import main
from omnimem_train.config import load_config
from omnimem_train.models.builtin import build_tiny_model
from omnimem_train.train.run import run_training

RECIPE = "recipes/train/tiny_cpu.yaml"


def _cfg(tiny_manifest, out, *extra):
    return load_config(RECIPE, [f"dataset={tiny_manifest}", f"output_dir={out}", "report_to=none",
                                "per_device_train_batch_size=1", "memory.group_size=16", "memory.budget=20", *extra])


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_training_learns_moves_only_lora_and_saves(tiny_manifest, tmp_path):
    cfg = _cfg(tiny_manifest, tmp_path / "run", "max_steps=8", "save_steps=4", "learning_rate=1e-2")
    trainer = run_training(cfg)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])  # it learns
    assert all(r["memory_tokens_per_layer"] <= 20 for r in trainer.state.log_history if "loss" in r)
    # Frozen weights are bit-identical to the base; LoRA B moved away from its zero init.
    base, _ = build_tiny_model("tiny-omni")
    inner = trainer.model.inner
    base_sd = base.state_dict()
    for name, p in inner.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), base_sd[name.replace(".base_layer", "")]), name
    saved = _adapter(tmp_path / "run")
    assert saved and all("lora_" in k for k in saved)
    assert all(".language_model.layers." in k for k in saved)  # LLM decoder only, never the towers
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items())
    for step in (4, 8):
        ckpt = tmp_path / "run" / f"checkpoint-{step}"
        assert (ckpt / "adapter_model.safetensors").exists() and (ckpt / "optimizer.pt").exists()
        assert (ckpt / "config.yaml").exists()
        assert json.loads((ckpt / "data_position.json").read_text())["global_step"] == step
    memory = json.loads((tmp_path / "run" / "omnimem_memory.json").read_text())
    assert memory["scorer"] == "omnimem" and memory["budget"] == 20
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 9))


def test_resume_continues_exactly(tiny_manifest, tmp_path):
    straight = run_training(_cfg(tiny_manifest, tmp_path / "a", "max_steps=4", "save_steps=2"))
    run_training(_cfg(tiny_manifest, tmp_path / "b", "max_steps=2", "save_steps=2"))  # stop half way
    resumed = run_training(_cfg(tiny_manifest, tmp_path / "b", "max_steps=4", "save_steps=2",
                                f"resume_from_checkpoint={tmp_path / 'b' / 'checkpoint-2'}"))
    assert resumed.state.global_step == straight.state.global_step == 4
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k


def test_wandb_runs_offline_and_writes_run_files(tiny_manifest, tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    attempts = []
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):  # loopback/unix sockets are wandb's local service
        host = address[0] if isinstance(address, tuple) else "unix"
        if host not in ("unix", "127.0.0.1", "localhost", "::1"):
            attempts.append(address)
            raise OSError(f"network access attempted: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    code = main(["train", RECIPE, f"dataset={tiny_manifest}", f"output_dir={tmp_path / 'run'}", "max_steps=1",
                 "report_to=wandb", "per_device_train_batch_size=1", "memory.group_size=16"])
    assert code == 0
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("run-*.wandb"))
    assert attempts == []  # nothing in this process tried the network


@pytest.mark.parametrize(
    "override,key",
    [("learning_rate=-1", "learning_rate"), ("lora_rank=0", "lora_rank"), ("memory.budget=-5", "memory.budget"),
     ("deepspeed=zero9", "deepspeed"), ("dataset=/nonexistent/manifest.jsonl", "manifest"),
     ("dataset=null", "dataset"), ("lora_target=q_proj,qkv", "lora_target")],
)
def test_bad_recipe_values_are_one_line_errors(tiny_manifest, tmp_path, capsys, override, key):
    code = main(["train", RECIPE, f"dataset={tiny_manifest}", f"output_dir={tmp_path}", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and key in err[0], err


def test_full_finetuning_without_compression_saves_full_weights(tiny_manifest, tmp_path):
    """The testbed base model's mode: every LLM weight trains on full context; towers stay frozen
    unless asked."""
    cfg = _cfg(tiny_manifest, tmp_path / "full", "finetuning_type=full", "compression=none", "max_steps=2",
               "save_steps=100", "gradient_checkpointing=false")
    trainer = run_training(cfg)
    inner = trainer.model.inner
    trained = {n for n, p in inner.named_parameters() if p.requires_grad}
    assert any(".language_model.layers." in n for n in trained)
    assert not any(n.startswith(("model.audio_tower.", "model.visual.")) for n in trained)
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    saved = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tmp_path / "full").state_dict()
    base = build_tiny_model("tiny-omni")[0].state_dict()
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[key], base[key])  # the LLM moved
    tower = "model.audio_tower.conv1.weight"
    assert torch.equal(saved[tower], base[tower])  # the frozen tower did not
    assert all(r["memory_tokens_per_layer"] > 20 for r in trainer.state.log_history if "loss" in r)  # no budget


def _two_questions_per_clip(tiny_manifest, tmp_path):
    from dataclasses import replace

    from omnimem_train.data import read_manifest
    from omnimem_train.data.manifest import write_manifest

    rows = []
    for s in read_manifest(tiny_manifest):
        rows += [s, replace(s, id=s.id + "-q1", question="Which option was last?", answer="A")]
    path = tmp_path / "two.jsonl"
    write_manifest(path, rows)
    return path


@pytest.mark.parametrize("grouped", [True, False])
def test_questions_about_one_clip_share_a_batch(tiny_manifest, tmp_path, grouped):
    from omnimem_train.train.sampler import MediaGroupedSampler

    manifest = _two_questions_per_clip(tiny_manifest, tmp_path)
    cfg = load_config(RECIPE, [f"dataset={manifest}", f"output_dir={tmp_path / 'run'}", "report_to=none",
                               "compression=none", "finetuning_type=full", "cache_encoder_outputs=true",
                               "per_device_train_batch_size=2", "max_steps=4", f"group_by_media={grouped}"])
    trainer = run_training(cfg)
    loader = trainer.get_train_dataloader()
    assert isinstance(loader.batch_sampler.sampler if hasattr(loader.batch_sampler, "sampler") else None,
                      MediaGroupedSampler) == grouped
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = [[ex.video for ex in batch] for batch in loader]
        assert sorted(v for b in batches for v in b) == sorted(2 * [s for s in {v for b in batches for v in b}])
        epochs.append(batches)
    if grouped:  # each batch is one clip's two questions, clips in a new order each epoch
        assert all(len(set(b)) == 1 for batches in epochs for b in batches)
        assert epochs[0] != epochs[1]
        assert trainer.model.cache.misses == 4  # each clip encoded once in 4 steps of 2 rows
    else:
        assert any(len(set(b)) == 2 for batches in epochs for b in batches)


def test_dataset_question_types_keeps_only_those_rows(tiny_manifest, tmp_path, capsys):
    from types import SimpleNamespace

    from omnimem_train.errors import ConfigError
    from omnimem_train.train.run import _of_types

    rows = [SimpleNamespace(question_type=t) for t in ("order", "detail", "order", "av")]
    cfg = SimpleNamespace(dataset_question_types=["order", "av"], dataset="m.jsonl", dataset_split="train")
    assert _of_types(rows, cfg) == [rows[0], rows[2], rows[3]]
    assert "3 of 4 rows" in capsys.readouterr().out
    assert _of_types(rows, SimpleNamespace(dataset_question_types=[])) is rows  # empty: every row
    # None of the asked types in the split: a one-line error before any model is loaded.
    cfg = _cfg(tiny_manifest, tmp_path / "run", "max_steps=1", "dataset_question_types=[temporal_order]")
    with pytest.raises(ConfigError, match=r"dataset_question_types: none of \['temporal_order'\].*has colour"):
        run_training(cfg)
    assert list((tmp_path / "run").iterdir()) == []  # checked writable first, nothing written into it


def test_lora_init_does_not_depend_on_whether_the_builtin_model_was_built(tmp_path, monkeypatch):
    """The first use of a built-in model builds and saves it (drawing random numbers); a later run loads
    it. Both start from the same LoRA weights."""
    from omnimem_train.train.run import build_objective

    monkeypatch.setenv("OMNIMEM_HOME", str(tmp_path / "home"))
    cfg = load_config(RECIPE, [f"output_dir={tmp_path / 'run'}", "lora_target=q_proj,k_proj,v_proj"])
    states = [{k: v.clone() for k, v in build_objective(cfg)[0].inner.state_dict().items() if "lora_A" in k}
              for _ in ("built", "loaded")]
    assert states[0] and all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_full_finetuning_resume_continues_exactly(tiny_manifest, tmp_path):
    # finetuning_type full saves whole weights (not an adapter): the resume loads them strictly
    full = ["finetuning_type=full", "save_steps=2", "learning_rate=1e-3"]
    straight = run_training(_cfg(tiny_manifest, tmp_path / "a", "max_steps=4", *full))
    run_training(_cfg(tiny_manifest, tmp_path / "b", "max_steps=2", *full))  # stop half way
    resumed = run_training(_cfg(tiny_manifest, tmp_path / "b", "max_steps=4", *full,
                                f"resume_from_checkpoint={tmp_path / 'b' / 'checkpoint-2'}"))
    assert resumed.state.global_step == straight.state.global_step == 4
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("a", "b"))
    assert a.keys() == b.keys()
    moved = load_file(str(tmp_path / "b" / "checkpoint-2" / "model.safetensors"))
    assert any((a[k] - moved[k]).abs().max() > 0 for k in a)  # steps 3-4 changed weights
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k


def test_full_weights_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    from safetensors.torch import save_file

    from omnimem_train.errors import ConfigError
    from omnimem_train.train.trainer import load_full_weights

    model, _ = build_tiny_model("tiny-omni")
    model.save_pretrained(tmp_path)
    load_full_weights(model, tmp_path)  # its own checkpoint fits
    state = load_file(str(tmp_path / "model.safetensors"))
    name = next(k for k in state if ".layers.0." in k)
    save_file({k: v for k, v in state.items() if k != name}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="does not fit the model.*missing"):
        load_full_weights(model, tmp_path)
    save_file({**state, "extra.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="does not fit the model.*unexpected"):
        load_full_weights(model, tmp_path)
