#!/usr/bin/env bash
# Data-parallel tunedeck on the GPUs of one NVIDIA host (NCCL through mlx.launch), against 1 GPU.
# Prerequisite: the MLX CUDA wheels and tunedeck installed (../shared/device/README.md). Results go to $OUT.
# The 7B-shape model is built once into $WS (bench: `tunedeck demo-model $WS/model-7b --size 7b --random`).
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
WS=${WS:-/tmp/tunedeck-multi}
mkdir -p "$OUT" "$WS"
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on shared hosts
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
python3 bench/scale_out.py --size 7b --data long --seq 2048 --per-worker-batch 4 --keys q_proj,v_proj --rank 16 \
    --workers 1,2 --match-loss --steps "${STEPS:-8}" --warmup 2 --timeout 400 --keep "$WS" 2>&1 | tee "$OUT/multi_gpu.txt"
