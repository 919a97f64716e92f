"""Two CPU processes through `./launch.sh` (DeepSpeed launcher, gloo) train the tiny Omni thinker
with LoRA under compression, with ZeRO-2 and with ZeRO-3."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_launch_trains_lora(tiny_manifest, tmp_path, zero):
    out = tmp_path / zero
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED")}
    env.update(NPROC_PER_NODE="2", NUM_GPUS="0", MASTER_PORT=str(29500 + (os.getpid() % 2000)),
               PYTHON=sys.executable, OMNIMEM_HOME=str(tmp_path / "home"))
    cmd = ["bash", "launch.sh", "recipes/train/tiny_cpu.yaml", f"deepspeed={zero}", f"dataset={tiny_manifest}",
           f"output_dir={out}", "report_to=none", "max_steps=6", "save_steps=1", "save_total_limit=10",
           "per_device_train_batch_size=1", "learning_rate=1e-2", "memory.group_size=16", "memory.budget=20"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
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
