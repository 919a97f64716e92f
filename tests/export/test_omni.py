"""A LoRA trained on the thinker of a *full* Qwen2.5-Omni base exports as a complete Omni checkpoint
(talker and token2wav byte-identical to the base's, in their stored dtypes), or with --thinker-only
as the merged thinker alone."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration

from omnimem_train.commands.cli import main
from omnimem_train.models.load import load_adapter
from tests.export.runs import peft_reference, save_like_trainer, text_logits


def _tensors(folder) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


@pytest.fixture(scope="module")
def omni_run(full_omni_base, tmp_path_factory):
    return save_like_trainer(tmp_path_factory.mktemp("omni_run") / "run", str(full_omni_base), budget=20)


def test_full_omni_export_keeps_talker_and_token2wav(full_omni_base, omni_run, tmp_path, capsys):
    out = tmp_path / "omni"
    assert main(["export", str(omni_run), "--output", str(out)]) == 0
    assert "talker/token2wav tensors byte-identical" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_5_omni"
    assert (out / "spk_dict.pt").read_bytes() == (full_omni_base / "spk_dict.pt").read_bytes()
    full = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(out), local_files_only=True, use_safetensors=True)
    assert full.has_talker and "Chelsie" in full.speaker_map
    base, exported = _tensors(full_omni_base), _tensors(out)
    parts = [k for k in base if k.startswith(("talker.", "token2wav."))]
    assert parts and base["talker.codec_head.weight"].dtype == torch.bfloat16
    for k in parts:  # same dtype, same bytes
        assert exported[k].dtype == base[k].dtype, k
        assert torch.equal(exported[k].view(-1).view(torch.uint8), base[k].view(-1).view(torch.uint8)), k
    # The thinker is merged: its logits are base + LoRA's.
    ref = peft_reference(str(full_omni_base), omni_run)
    assert (text_logits(ref) - text_logits(load_adapter(str(out), "float32", "cpu"))).abs().max() <= 1e-4
    q = "thinker.model.layers.0.self_attn.q_proj.weight"  # saved (checkpoint) key names
    assert not torch.equal(exported[q], base[q])


def test_thinker_only_export(full_omni_base, omni_run, tmp_path):
    out = tmp_path / "thinker"
    assert main(["export", str(omni_run), "--output", str(out), "--thinker-only"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"
    assert not any(k.startswith(("talker.", "token2wav.")) for k in _tensors(out))
    assert not (out / "spk_dict.pt").exists()
    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(out), local_files_only=True,
                                                                         use_safetensors=True)
    ref = peft_reference(str(full_omni_base), omni_run)
    ids = ref.tokenizer("What colour was the square? The answer is B.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (thinker(input_ids=ids).logits - text_logits(ref)).abs().max() <= 1e-4


def test_full_finetune_on_full_omni_base(full_omni_base, tmp_path):
    run = save_like_trainer(tmp_path / "run", str(full_omni_base), finetuning_type="full", budget=20)
    assert main(["export", str(run)]) == 0
    out = run / "merged"
    record = json.loads((out / "omnimem_export.json").read_text())
    assert record["method"] == "full" and record["identical_base_tensors"] > 0
    trained, exported = _tensors(run), _tensors(out)  # the run saved the thinker alone
    assert all(torch.equal(v, exported["thinker." + k]) for k, v in trained.items())
