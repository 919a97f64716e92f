"""Shared fixtures: tiny random-weight models of the real architecture classes, built in-process."""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread (see pytest_configure), also for accelerate: on a CPU run it sets torch's
# thread count itself, with a warning, when OMP_NUM_THREADS is unset.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.distributed's variables: a test that sets them (ensure_single_process_dist_env writes
# os.environ directly) must not turn later in-process trainings into "distributed" ones.
DIST_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def pytest_configure(config):
    # Tiny models are overhead-bound: one intra-op thread is as fast, and far more robust when the
    # 2-core machine is shared (two busy threads per process were seen to slow tests ~100x).
    import torch

    from omnimem_train.utils.warnings import install_filters

    torch.set_num_threads(1)
    install_filters()  # as the command line does: the known harmless warnings stay out of the report


def _session_dirs(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.getbasetemp()
    return {"OMNIMEM_HOME": str(base / "omnimem_home"), "OMNIMEM_CACHE": str(base / "omnimem_cache")}


@pytest.fixture(scope="session", autouse=True)
def _omnimem_session_dirs(tmp_path_factory):
    """Session and module fixtures run before the function-scoped setting below: the same folders
    for them, so no test writes built-in models or cached weights into the checkout or ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _session_dirs(tmp_path_factory).items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_shm_buffers():
    """DeepSpeed's CPU all-reduce buffers (67 MB of RAM each in /dev/shm) of launches the tests kill
    on purpose cannot be unlinked by their ranks (`train.deepspeed.remove_shm_buffer`): remove the
    ones this session created."""
    from pathlib import Path

    shm = Path("/dev/shm")
    pattern = "deepspeed_allreduce_buffer_*"
    before = set(shm.glob(pattern)) if shm.is_dir() else set()
    yield
    if shm.is_dir():
        for path in set(shm.glob(pattern)) - before:
            path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _omnimem_home(tmp_path_factory, monkeypatch):
    """Built-in models are saved under one session folder, never the checkout's checkpoints/;
    de-quantized GGUF weights are cached under another (OMNIMEM_CACHE), never ~/.cache."""
    for key, value in _session_dirs(tmp_path_factory).items():
        monkeypatch.setenv(key, value)


@pytest.fixture(autouse=True)
def _restore_dist_env():
    before = {key: os.environ.get(key) for key in DIST_KEYS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
