"""`omnimem-train export` of a LoRA run and of a full fine-tune: the exported folder reloads through
`load_adapter` and gives the logits of base + trained weights, and carries the memory settings."""

import json

import torch
from safetensors.torch import load_file

from omnimem_train.commands.cli import main
from omnimem_train.export.verify import probe_logits
from omnimem_train.models.load import load_adapter
from tests.export.runs import peft_reference, save_like_trainer, text_logits


def test_lora_run_exports_merged_verified_model(lora_run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", str(lora_run), "--output", str(out)]) == 0
    log = capsys.readouterr().out
    assert "lora-merge" in log and "verify: max |logit difference|" in log
    # Logits: peft's own base + adapter vs the exported folder, on the model's text forward and on
    # the audio-visual probe.
    ref = peft_reference("builtin:tiny-omni", lora_run)
    exported = load_adapter(str(out), "float32", "cpu")
    assert (text_logits(ref) - text_logits(exported)).abs().max() <= 1e-4
    assert (probe_logits(ref) - probe_logits(exported)).abs().max() <= 1e-4
    # A plain model: no LoRA tensors, and the merge really changed the targeted projections.
    weights = load_file(str(out / "model.safetensors"))
    assert weights and not any("lora" in k for k in weights)
    base = load_adapter("builtin:tiny-omni", "float32", "cpu").model.state_dict()
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(exported.model.state_dict()[q], base[q])
    # Memory settings: the run's; the run folder already holds its budget file under a relative
    # name (the trainer copies it), and the export carries it along.
    run_memory = json.loads((lora_run / "omnimem_memory.json").read_text())
    assert run_memory["budget_file"] == "omnimem_budget.json"
    memory = json.loads((out / "omnimem_memory.json").read_text())
    assert memory == run_memory
    assert (out / "omnimem_budget.json").read_text() == (lora_run / "omnimem_budget.json").read_text()
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "config.json"} <= {
        p.name for p in out.iterdir()}
    record = json.loads((out / "omnimem_export.json").read_text())
    assert record["method"] == "lora-merge" and record["base"] == "builtin:tiny-omni"
    assert record["verification"]["max_abs_logit_diff"] <= 1e-4
    assert record["source"] == str(lora_run.resolve())


def test_checkpoint_folder_exports_next_to_it(lora_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_run / "checkpoint-2", run / "checkpoint-2")
    assert main(["export", str(run / "checkpoint-2")]) == 0
    out = run / "merged-checkpoint-2"  # the default for a checkpoint folder
    assert (out / "omnimem_export.json").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp folder left
    ref = peft_reference("builtin:tiny-omni", run / "checkpoint-2")
    assert (text_logits(ref) - text_logits(load_adapter(str(out), "float32", "cpu"))).abs().max() <= 1e-4


def test_full_finetune_of_text_lm_exports_its_weights(tmp_path, capsys):
    run = save_like_trainer(tmp_path / "full", "builtin:tiny-llama", finetuning_type="full", budget=20)
    assert main(["export", str(run), "--max-shard-size", "100KB"]) == 0
    out = run / "merged"
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
    record = json.loads((out / "omnimem_export.json").read_text())
    assert record["method"] == "full" and record["model_type"] == "llama"
    trained = load_adapter(str(run), "float32", "cpu")  # the run folder itself is a loadable model
    exported = load_adapter(str(out), "float32", "cpu")
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, exported.model.state_dict()[k]), k
    assert json.loads((out / "omnimem_memory.json").read_text()) == json.loads(
        (run / "omnimem_memory.json").read_text())
