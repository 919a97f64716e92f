"""Session fixtures for the export tests: one real 2-step LoRA run and a tiny full Qwen2.5-Omni base."""

import json

import pytest

from omnimem_train.config import load_config
from tests.export.runs import RECIPE, tiny_full_omni


@pytest.fixture(scope="session")
def omnimem_home(tmp_path_factory):
    """The session's built-in model folder (the same one tests/conftest.py points OMNIMEM_HOME at);
    session fixtures run before that function-scoped setting, so they set it themselves."""
    return str(tmp_path_factory.getbasetemp() / "omnimem_home")


@pytest.fixture(scope="session")
def export_manifest(tmp_path_factory):
    from data_prep.tiny_qa import make_tiny_qa

    return make_tiny_qa(tmp_path_factory.mktemp("export_qa"), num=4, seconds=2.0, size=56, seed=0)


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, export_manifest, omnimem_home):
    """A real `run_training` LoRA run (2 steps) on builtin:tiny-omni, served with a budget file."""
    from omnimem_train.train.run import run_training

    root = tmp_path_factory.mktemp("lora_run")
    budget = root / "budget.json"
    budget.write_text(json.dumps({"layers": [[4, 16], [4, 12], [2, 10], [2, 8]]}))
    cfg = load_config(RECIPE, [f"dataset={export_manifest}", f"output_dir={root / 'run'}", "report_to=none",
                               "per_device_train_batch_size=1", "memory.group_size=16", "memory.budget=null",
                               f"memory.budget_file={budget}", "max_steps=2", "save_steps=2",
                               "learning_rate=1e-2"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIMEM_HOME", omnimem_home)
        run_training(cfg)
    return root / "run"


@pytest.fixture(scope="session")
def full_omni_base(tmp_path_factory):
    return tiny_full_omni(tmp_path_factory.mktemp("full_omni_base"))
