#!/usr/bin/env bash
# The prepared GPU check: the real-width decoder (random weights, bf16, sdpa) over a 1-hour stream at
# 2 fps, OmniMem at 8,192 tokens per layer against full memory (until it runs out of memory), then one
# budget-aware LoRA step under DeepSpeed ZeRO-2 on one GPU. Sized for one H100 (80 GB), at most 8 min.
#
#   bash benchmarks/gpu_check.sh                        # one GPU; the Qwen2.5-Omni-7B thinker
#   bash benchmarks/gpu_check.sh --model vsalmonn2plus-7b
#   bash benchmarks/gpu_check.sh --dry-run              # CPU: tiny config, short stream (< 1 min)
#
# Every option is passed to benchmarks/gpu_check.py (its --help lists them). It prints the device,
# then a streaming table and a training table. Exit status: 0 when every part ran (full memory running
# out of memory is an expected outcome, not a failure), 1 when a part failed, 124 at the time cap.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
python=${PYTHON:-python3}
[ -x "$here/.venv/bin/python" ] && python=${PYTHON:-$here/.venv/bin/python}

limit=${GPU_CHECK_LIMIT_S:-470}   # 8 minutes, less a few seconds for start-up and the report
dry=0
for arg in "$@"; do
  [ "$arg" = "--dry-run" ] && dry=1
done

if [ "$dry" = 1 ]; then
  limit=${GPU_CHECK_LIMIT_S:-120}
else
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi
  # Fewer, larger segments: the full-memory run grows its tensors group by group.
  export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
fi
export TOKENIZERS_PARALLELISM=false
exec timeout --signal=TERM --kill-after=15 "$limit" "$python" benchmarks/gpu_check.py "$@"
