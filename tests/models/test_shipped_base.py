"""The trained testbed base shipped in assets/testbed-base: its weights are the ones recorded (a
fingerprint), it loads strictly as the testbed-omni architecture, and it is a trained model: with
full memory it answers testbed test clips it never saw (a random-weight model of the same
architecture answers at chance)."""

import hashlib
from pathlib import Path

import pytest

from omnimem_train.config import load_config

BASE = Path("assets/testbed-base")
SHA256 = "55118c5abef09f8f92fb3abcd785df8e99ede86f9c24837c5076f0d681153e07"


def test_weights_are_the_recorded_ones():
    digest = hashlib.sha256((BASE / "model.safetensors").read_bytes()).hexdigest()
    assert digest == SHA256, "assets/testbed-base/model.safetensors changed; retrain with the command in TRAINED.md"
    trained = (BASE / "TRAINED.md").read_text()
    assert "omnimem-train" in trained and SHA256 in trained  # the command and the fingerprint travel together


def test_loads_strictly_as_the_testbed_architecture():
    from omnimem_train.models.builtin import build_tiny_model
    from omnimem_train.models.load import load_adapter
    from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter

    adapter = load_adapter(str(BASE), "float32", "cpu", "sdpa", False)
    reference, tok = build_tiny_model("testbed-omni")
    assert isinstance(adapter, Qwen2_5OmniAdapter) and len(adapter.decoder_layers) == 4
    shipped = adapter.model.state_dict()
    assert {k: v.shape for k, v in shipped.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert adapter.tokenizer.get_vocab() == tok.get_vocab()


@pytest.fixture(scope="module")
def test_clips(tmp_path_factory):
    """The first 8 clips of the testbed's seed-0 test split (the shipped base trained on its train split)."""
    from data_prep.testbed import TestbedSpec, generate_testbed

    out = tmp_path_factory.mktemp("testbed")
    spec = TestbedSpec(seconds=4.0, n_visual_events=2, n_audio_events=2, box_fraction=0.5)
    generate_testbed(out, 0, 0, 8, spec, seed=0, workers=1)
    return out / "manifest.jsonl"


def test_answers_unseen_test_clips_with_full_memory(test_clips, tmp_path):
    from omnimem_train.eval.grid import run_eval

    cfg = load_config("recipes/eval/testbed.yaml", [
        f"model_name_or_path={BASE}", f"eval.manifest={test_clips}", f"output_dir={tmp_path}", "device=cpu",
        "eval.scorers=[]", "eval.per_head_scorers=[]", "eval.budget_fractions=[]"])
    full = run_eval(cfg)["cells"][0]
    assert full["cell"] == "full" and full["n"] == 8
    assert full["correct"] >= 7  # chance is 2 of 8


def test_long_base_weights_are_the_recorded_ones_and_load_strictly():
    from omnimem_train.models.builtin import build_tiny_model
    from omnimem_train.models.load import load_adapter

    long_base = Path("assets/testbed-long-base")
    sha = "ab745b588fefe07a27524c7bea5e1738b42c7ea234e2ab34969707e665b68798"
    assert hashlib.sha256((long_base / "model.safetensors").read_bytes()).hexdigest() == sha
    assert sha in (long_base / "TRAINED.md").read_text()
    adapter = load_adapter(str(long_base), "float32", "cpu", "sdpa", False)
    reference, _ = build_tiny_model("testbed-omni")
    shipped = adapter.model.state_dict()
    assert {k: v.shape for k, v in shipped.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    # trained on from the 4-s base: not the same weights
    base = load_adapter(str(BASE), "float32", "cpu", "sdpa", False).model.state_dict()
    assert any((shipped[k] - base[k]).abs().max() > 0 for k in shipped)
