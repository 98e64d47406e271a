#!/usr/bin/env bash
# Start Dask workers for screenxai under SLURM: one worker per allocated GPU
# (declaring GPU=1 so model tasks land there), else one per CPU core.
# Usage: sbatch --gres=gpu:4 --cpus-per-task=16 deploy/slurm-workers.sh tcp://SCHEDULER:8786
#SBATCH --job-name=screenxai-workers
#SBATCH --time=12:00:00
set -euo pipefail
scheduler=${1:?usage: slurm-workers.sh SCHEDULER_ADDRESS}
gpus=${SLURM_GPUS_ON_NODE:-0}
if [ "$gpus" -gt 0 ]; then
  for ((i = 0; i < gpus; i++)); do
    CUDA_VISIBLE_DEVICES=$i dask worker "$scheduler" --nworkers 1 --nthreads 1 --resources GPU=1 &
  done
else
  dask worker "$scheduler" --nworkers "${SLURM_CPUS_PER_TASK:-1}" --nthreads 1 &
fi
wait
