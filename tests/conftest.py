"""Shared fixtures: tiny random-weight models of the real architecture classes, built in-process."""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    # Tiny models are overhead-bound: one intra-op thread is as fast, and far more robust when the
    # 2-core machine is shared (two busy threads per process were seen to slow tests ~100x).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _omnimem_home(tmp_path_factory, monkeypatch):
    """Built-in models are saved under one session folder, never the checkout's checkpoints/."""
    monkeypatch.setenv("OMNIMEM_HOME", str(tmp_path_factory.getbasetemp() / "omnimem_home"))


@pytest.fixture(scope="session")
def tiny_omni():
    """Qwen2_5OmniThinkerForConditionalGeneration (4 text layers, hidden 64) wrapped in its adapter."""
    from omnimem_train.models.builtin import build_tiny_model
    from omnimem_train.models.qwen2_5_omni import Qwen2_5OmniAdapter

    model, tok = build_tiny_model("tiny-omni")
    return Qwen2_5OmniAdapter(model, tok)


@pytest.fixture(scope="session")
def tiny_llama():
    """LlamaForCausalLM (4 layers, hidden 64) wrapped in the text-LM adapter."""
    from omnimem_train.models.builtin import build_tiny_model
    from omnimem_train.models.text_lm import TextLMAdapter

    model, tok = build_tiny_model("tiny-llama")
    return TextLMAdapter(model, tok)


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """A tiny training set on disk (real mp4 clips + manifest)."""
    from data_prep.tiny_qa import make_tiny_qa

    return make_tiny_qa(tmp_path_factory.mktemp("tiny_qa"), num=4, seconds=2.0, size=56, seed=0)
