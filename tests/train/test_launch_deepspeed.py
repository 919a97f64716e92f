"""Two CPU processes through `./launch.sh` (DeepSpeed launcher, gloo) train the tiny Omni thinker
with LoRA under compression, with ZeRO-2 and with ZeRO-3; a run killed while it saves a checkpoint
resumes from the newest complete one and ends equal to a run that was never stopped."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _launch_env(tmp_path, port_offset: int = 0, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED")}
    env.update(NPROC_PER_NODE="2", NUM_GPUS="0", MASTER_PORT=str(29500 + (os.getpid() + port_offset) % 2000),
               PYTHON=sys.executable, OMNIMEM_HOME=str(tmp_path / "home"), **extra)
    return env


def _launch_cmd(tiny_manifest, out, zero, *extra) -> list[str]:
    return ["bash", "launch.sh", "recipes/train/tiny_cpu.yaml", f"deepspeed={zero}", f"dataset={tiny_manifest}",
            f"output_dir={out}", "report_to=none", "max_steps=6", "save_steps=1", "save_total_limit=10",
            "per_device_train_batch_size=1", "learning_rate=1e-2", "memory.group_size=16", "memory.budget=20",
            *extra]


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_launch_trains_lora(tiny_manifest, tmp_path, zero):
    from omnimem_train.train.deepspeed import shm_buffer_path

    out = tmp_path / zero
    env = _launch_env(tmp_path)
    buffers = [shm_buffer_path({**env, "MASTER_ADDR": "127.0.0.1", "RANK": str(r)}) for r in (0, 1)]
    run = subprocess.run(_launch_cmd(tiny_manifest, out, zero), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    # DeepSpeed's CPU all-reduce buffers (67 MB of RAM per rank in /dev/shm) are not left behind
    assert not any(p.exists() for p in buffers), buffers
    assert "--num_gpus 2" in log  # the printed launcher command: 2 processes
    metrics = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])  # it learns
    assert all(m["memory_tokens_per_layer"] <= 20 for m in metrics if "loss" in m)  # under compression
    final = load_file(str(out / "adapter_model.safetensors"))
    first = load_file(str(out / "checkpoint-1" / "adapter_model.safetensors"))
    assert final and all("lora_" in k and ".language_model.layers." in k for k in final)
    assert all(v.numel() > 0 for v in final.values())  # ZeRO-3 gathered real weights
    assert any((final[k] - first[k]).abs().max() > 0 for k in final)  # LoRA weights moved
    # Only LoRA is trained: the trainable count the run reports equals the adapter's size.
    trainable = int(re.search(r"trainable parameters: ([\d,]+)", log).group(1).replace(",", ""))
    assert trainable == sum(v.numel() for v in final.values())
    # Every checkpoint is complete: each rank's ZeRO shards are in its manifest.
    from omnimem_train.train.checkpoints import MANIFEST, incomplete

    listed = json.loads((out / "checkpoint-6" / MANIFEST).read_text())["files"]
    assert incomplete(out / "checkpoint-6") is None and "rng_state_1.pth" in listed
    assert any(name.startswith("global_step6/") for name in listed)


# Loaded at interpreter start-up from PYTHONPATH in every process of the launch: opening
# $HANG_ON_SUFFIX for writing (the trainer state, the last file the Trainer writes into a checkpoint)
# creates $HANG_READY and blocks, so the test can kill the run in the middle of that save.
_HANG_IN_SAVE = """
import builtins, os, time

_suffix = os.environ.get("HANG_ON_SUFFIX")
if _suffix:
    _open = builtins.open

    def _open_or_hang(file, mode="r", *args, **kwargs):
        if "w" in mode and isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith(_suffix):
            _open(os.environ["HANG_READY"], "w").close()
            time.sleep(3600)
        return _open(file, mode, *args, **kwargs)

    builtins.open = _open_or_hang
"""


def _run(cmd, env, log: Path) -> None:
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600).returncode
    assert code == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_then_latest_resumes_exactly(tiny_manifest, tmp_path):
    """ZeRO-2, 2 processes: SIGKILL to the whole launch while checkpoint-4 is being saved; the
    `latest` resume continues from checkpoint-3 and ends equal to a run that was never stopped
    (about 40 s on 2 cores)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_launch_cmd(tiny_manifest, straight, "zero2"), _launch_env(tmp_path), tmp_path / "straight.log")

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HANG_IN_SAVE)
    ready = tmp_path / "hanging"
    env = _launch_env(tmp_path, 1, PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
                      HANG_ON_SUFFIX=os.path.join("checkpoint-4", "trainer_state.json"), HANG_READY=str(ready))
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_launch_cmd(tiny_manifest, killed, "zero2"), cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.wait()
    assert ready.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    assert not (killed / "checkpoint-4").exists()  # the save never finished: no checkpoint-4 at all

    _run(_launch_cmd(tiny_manifest, killed, "zero2", "resume_from_checkpoint=latest"), _launch_env(tmp_path, 2),
         tmp_path / "resumed.log")
    assert f"note: resuming from {killed / 'checkpoint-3'}" in (tmp_path / "resumed.log").read_text()
    a = load_file(str(straight / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) == 0
    steps = [json.loads(s)["step"] for s in (killed / "metrics.jsonl").read_text().splitlines() if '"loss"' in s]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert not list(killed.glob(".partial-*"))  # the killed save's leftovers were cleared
