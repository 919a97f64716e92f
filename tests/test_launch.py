"""launch.sh builds the right DeepSpeed launcher command (DRY_RUN prints it without running)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/infer/tiny_omni.yaml"


def _cmd(env: dict, *args: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "HOSTFILE")}
    full.update(DRY_RUN="1", **env)
    out = subprocess.run(["bash", "launch.sh", *args], cwd=ROOT, env=full, capture_output=True, text=True, check=True)
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("+ ")
    return line[2:].split()


def _after(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_single_node_gpus_and_overrides():
    cmd = _cmd({"NUM_GPUS": "8"}, RECIPE, "learning_rate=1e-4")
    assert cmd[0].endswith("deepspeed") and _after(cmd, "--num_gpus") == "8"
    assert cmd[-4:] == ["omnimem_train.commands.cli", "train", RECIPE, "learning_rate=1e-4"]
    assert "--no_local_rank" in cmd and "--module" in cmd


def test_cpu_defaults_to_one_process_and_nproc_overrides():
    assert _after(_cmd({"NUM_GPUS": "0"}, RECIPE), "--num_gpus") == "1"
    assert _after(_cmd({"NUM_GPUS": "0", "NPROC_PER_NODE": "2"}, RECIPE), "--num_gpus") == "2"
    assert _after(_cmd({"NUM_GPUS": "8", "NPROC_PER_NODE": "4"}, RECIPE), "--num_gpus") == "4"


def test_multi_node_without_ssh_and_with_hostfile():
    env = {"NUM_GPUS": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    cmd = _cmd(env, RECIPE)
    assert "--no_ssh" in cmd and _after(cmd, "--num_nodes") == "2" and _after(cmd, "--node_rank") == "1"
    assert _after(cmd, "--master_addr") == "10.0.0.1" and _after(cmd, "--master_port") == "1234"
    cmd = _cmd({"NUM_GPUS": "8", "HOSTFILE": "hosts.txt"}, RECIPE)
    assert _after(cmd, "--hostfile") == "hosts.txt" and "--no_ssh" not in cmd


@pytest.mark.parametrize("args,needle", [(["missing.yaml"], "missing.yaml: recipe file not found"), ([], "Usage")])
def test_bad_invocation(args, needle):
    out = subprocess.run(["bash", "launch.sh", *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and needle.lower() in (out.stdout + out.stderr).lower()
