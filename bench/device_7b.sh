#!/usr/bin/env bash
# The 7B-shape benchmarks run on the device machine (NVIDIA H100/H200, MLX on CUDA, bf16).
# Prerequisite: the MLX CUDA wheels installed (../shared/device/README.md). Results go to $OUT.
# ROWS picks rows (default: all). --prompt-share 0 trains on every token (as mlx-lm's published numbers);
# 0.75 is the bundled tool-use data's prompt share, where KTO's KL pass shares the prompt.
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
B="python3 bench/compare_mlx_lm.py --size 7b --keys q_proj,v_proj --rank 16 --examples 48"
run() { local name=$1; shift; echo "== $name: $*"; $B "$@" 2>&1 | tail -6 | tee "$OUT/$name.txt"; }
want() { [[ -z "${ROWS:-}" || " $ROWS " == *" $1 "* ]]; }
want q4_b2_s1024_gc && run q4_b2_s1024_gc --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3
want bf16_b4_s512_all && run bf16_b4_s512_all --batch 4 --seq 512 --prompt-share 0 --steps 10 --warmup 4
want bf16_b4_s512 && run bf16_b4_s512 --batch 4 --seq 512 --steps 10 --warmup 4
want bf16_b4_s2048 && run bf16_b4_s2048 --batch 4 --seq 2048 --steps 6 --warmup 3
want bf16_b2_s1024_gc && run bf16_b2_s1024_gc --batch 2 --seq 1024 --grad-checkpoint --steps 6 --warmup 3
