#!/usr/bin/env bash
# Launch `omnimem-train train RECIPE.yaml [key=value ...]` with the DeepSpeed launcher.
#
#   ./launch.sh recipes/train/tiny_cpu.yaml                      # all visible GPUs, or 1 CPU process
#   NPROC_PER_NODE=2 ./launch.sh recipes/train/tiny_cpu.yaml     # 2 processes (CPU: gloo)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 ./launch.sh RECIPE.yaml   # on each node
#   HOSTFILE=hosts.txt ./launch.sh RECIPE.yaml                    # multi-node over ssh (pdsh)
#   DRY_RUN=1 ./launch.sh RECIPE.yaml                             # print the command only
#
# The exact command is printed before it runs. On a machine without GPUs it runs NPROC_PER_NODE
# CPU processes (default 1); DeepSpeed's `--num_gpus` flag then counts those processes.
# DS_LOG_LEVEL (default error) is the DeepSpeed launcher's log level; info shows its set-up lines.
set -euo pipefail

if [ $# -lt 1 ] || [[ "$1" == -h || "$1" == --help ]]; then
  echo "Usage: ./launch.sh RECIPE.yaml [key=value ...]"; awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"
  exit 2
fi
recipe=$1
shift
if [ ! -f "$recipe" ]; then
  echo "error: $recipe: recipe file not found" >&2
  exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
[ -x "$here/.venv/bin/python" ] && python=${PYTHON:-$here/.venv/bin/python}
deepspeed_bin=$(dirname "$python")/deepspeed
[ -x "$deepspeed_bin" ] || deepspeed_bin=deepspeed

if [ -n "${NUM_GPUS:-}" ]; then
  ngpu=$NUM_GPUS
else
  ngpu=$("$python" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
fi
if [ "$ngpu" -gt 0 ]; then nproc=${NPROC_PER_NODE:-$ngpu}; else nproc=${NPROC_PER_NODE:-1}; fi

nnodes=${NNODES:-1}
master_addr=${MASTER_ADDR:-127.0.0.1}
master_port=${MASTER_PORT:-29500}
cmd=("$deepspeed_bin" --log_level "${DS_LOG_LEVEL:-error}")
if [ -n "${HOSTFILE:-}" ]; then
  cmd+=(--hostfile "$HOSTFILE" --master_addr "$master_addr" --master_port "$master_port")
elif [ "$nnodes" -gt 1 ]; then
  # One launcher per node, no ssh: every node runs this script with its own NODE_RANK.
  cmd+=(--no_ssh --num_nodes "$nnodes" --node_rank "${NODE_RANK:?NODE_RANK is required when NNODES > 1}"
        --master_addr "$master_addr" --master_port "$master_port" --num_gpus "$nproc")
else
  cmd+=(--num_gpus "$nproc" --master_addr "$master_addr" --master_port "$master_port")
fi
# --no_local_rank: ranks come from the LOCAL_RANK env var, not an extra CLI argument.
cmd+=(--no_local_rank --module omnimem_train.commands.cli train "$recipe" "$@")

if [ "$ngpu" -eq 0 ]; then
  # CPU: gloo backend, one thread per process so 2 processes fit 2 cores.
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
export WANDB_MODE=${WANDB_MODE:-offline}
if [ "$nproc" -eq 1 ]; then procs="1 process"; else procs="$nproc processes"; fi
if [ "$nnodes" -eq 1 ]; then where="on this node"; else where="on each of $nnodes nodes"; fi
if [ -n "${HOSTFILE:-}" ]; then
  echo "launch: one process per slot listed in $HOSTFILE"
elif [ "$ngpu" -eq 0 ]; then
  echo "launch: ${procs/process/CPU process} $where (gloo)"
else
  echo "launch: $procs $where, one per GPU"
fi
echo "+ ${cmd[*]}"
[ -n "${DRY_RUN:-}" ] && exit 0
exec "${cmd[@]}"
