#!/usr/bin/env bash
# The 7B-shape benchmarks run on the device machine (NVIDIA H100/H200, MLX on CUDA, bf16).
# Prerequisite: the MLX CUDA wheels installed (../shared/device/README.md). Results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
B="python3 bench/compare_mlx_lm.py --size 7b --keys q_proj,v_proj --rank 16 --examples 48"
run() { local name=$1; shift; echo "== $name: $*"; $B "$@" 2>&1 | tail -6 | tee "$OUT/$name.txt"; }
run bf16_b4_s512 --batch 4 --seq 512 --steps 10 --warmup 4
run bf16_b4_s2048 --batch 4 --seq 2048 --steps 6 --warmup 3
run q4_b2_s1024_gc --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3
