#!/usr/bin/env bash
# The H200 measurements of issue 23, in parts that each fit one device call (../shared/device/README.md):
#   PART=A  MLX's bf16 matmul peak and the per-projection quantized / dequantized / bf16 costs (quant_matmul.py);
#           the 4-bit 2x1024 checkpointed row: mlx-lm, tunedeck SFT and KTO with model.quantized_matmul "auto"
#           (dequantize on CUDA), and tunedeck SFT with "kernel" (quantized_matmul, the old path)
#   PART=B  the KTO reference pass at 7B shape (reference_pass.py), the Mac-24GB preset's whole run phase by
#           phase (whole_run.py), the bf16 4x512 every-token row
#   PART=C  forecast vs measured peaks at 7B shape (forecast_7b.py)
#   PART=D  C, the reference pass again (4-bit layer by layer, bf16 both ways) and the preset's whole run
#   PART=E  memory at equal settings (issue 23.4): what a layer holds per token, MLX and torch (activation_memory.py),
#           then torch+PEFT SFT, TRL's KTOTrainer and tunedeck SFT at bf16 4x512, every token trained, no
#           checkpointing, the step compiled (trl_peer.py; trl, datasets, dill, multiprocess carried)
#   PART=F  tunedeck SFT and KTO at the same settings with train.compile = "off"
#   PART=G  issue 23.2, compiled per-layer steps: the 4-bit 2x1024 checkpointed row with train.compile "auto"
#           (each layer's forward and backward compiled), mlx-lm in the same call
#   PART=H  the same row's tunedeck SFT and KTO with train.compile "off" (eager layers), then the reference pass
#           layer by layer with compiled and with eager layers
#   PART=I  the Mac-24GB preset's whole run phase by phase (its reference pass unpadded), then the reference pass
#           over the bundled data's first 300 examples (real lengths: the first run compiles each new shape)
#   PART=J  the preset's whole run with train.compile "on" and "off": on real data's many batch shapes, what each
#           new shape's trace costs the steps and validation
#   PART=K  J without checkpointing (the whole step compiled, or not)
#   PART=L  the optimizer update eager and compiled (optimizer_update.py), the Mac preset's whole run (the load a
#           layer at a time), MLX's bf16 matmul peak and the bf16 4x512 every-token row as shipped (eager step,
#           compiled update), tunedeck SFT with train.compile "off" (nothing compiled) in the same call
#   PART=M  the 4-bit 2x1024 checkpointed row as shipped and tunedeck SFT with train.compile "off"
#   PART=N  where a checkpointed 4-bit step's time goes, SFT against KTO (step_phases.py), then M
#   PART=O  core.lean_backward: what a layer holds per token with and without it, whole layers and their attention
#           or MLP alone (activation_memory.py), then forecast vs measured peaks (forecast_7b.py)
#   PART=P  forecast vs measured peaks (forecast_7b.py), MLX's bf16 matmul peak and the bf16 4x512 every-token row
#   PART=T  the 4-bit 2x1024 checkpointed row (5 timed steps after 2 warm-up ones)
#   PART=R  MLX's CUDA graph limits against the whole step's peak: bf16 4x512 every-token SFT, with and without
#           train.lean_backward, at MLX's limits and at core.backend.CUDA_GRAPH_LIMITS (set in the environment
#           here: tunedeck sets them only where they are unset)
#   PART=Q  the optimizer update (optimizer_update.py) and the Mac preset's whole run (whole_run.py)
#   PART=U  the bf16 4x512 step's matmul floor (matmul_floor.py: its base-model matmuls and attention alone, MLX's
#           square-matmul peak), then bf16 4x512 every-token SFT with train.lean_backward off and on
#   PART=V  the same SFT with each part of train.lean_backward alone (LoRA's input; the SwiGLU backward), then Q
#   PART=W  SwiGLU's backward alone (swiglu_backward.py: 32 frozen 7B MLPs, plain, lean, custom_function-wrapped),
#           then the KTO reference pass over the bundled data's first 300 examples (4-bit, layer by layer)
#   PART=X  swiglu_backward.py again (core.lean_backward's SwiGLU now MLX's VJP redone), then bf16 4x512
#           every-token SFT with train.lean_backward off, on, and its LoRA part alone
#   PART=Y  MLX's bf16 matmul peak, then the bf16 4x512 every-token row as shipped (mlx-lm, SFT and KTO in one call,
#           train.compile and train.lean_backward "auto")
#   PART=Z  the same row's SFT and KTO with the whole step compiled (train.compile "on"), lean_backward on and off
# Raw outputs go to $OUT/h200_*.txt.
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/gpu.txt"
B="python3 bench/compare_mlx_lm.py --size 7b --keys q_proj,v_proj --rank 16 --examples 48"
row() { local name=$1 limit=$2; shift 2; echo "== $name: $*"; timeout "$limit" $B "$@" 2>&1 | tail -8 | tee "$OUT/h200_$name.txt"; }
case "${PART:-A}" in
  A)
    timeout 90 python3 bench/quant_matmul.py --reps 20 2>&1 | tee "$OUT/h200_quant_matmul.txt"
    row q4_b2_s1024_gc 340 --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3
    row q4_b2_s1024_gc_kernel 110 --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3 \
      --only sft --quantized-matmul kernel
    ;;
  B)
    timeout 150 python3 bench/reference_pass.py --size 7b --data synthetic --seq 1024 --examples 32 --batch 4 \
      --quantize 4 --grad-checkpoint --repeat 2 2>&1 | tail -3 | tee "$OUT/h200_reference_pass.txt"
    timeout 170 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 2>&1 | tail -3 \
      | tee "$OUT/h200_whole_run_mac_preset.txt"
    row bf16_b4_s512_all 230 --batch 4 --seq 512 --prompt-share 0 --steps 10 --warmup 4
    ;;
  C)
    timeout 420 python3 bench/forecast_7b.py 2>&1 | tail -20 | tee "$OUT/h200_forecast_7b.txt"
    ;;
  D)  # C, then the reference pass (4-bit layer by layer; bf16 both ways) and the preset's whole run
    timeout 120 python3 bench/forecast_7b.py 2>&1 | tail -20 | tee "$OUT/h200_forecast_7b.txt"
    timeout 200 python3 -c "import sys; sys.path.insert(0, 'bench'); from reference_pass import build_model; build_model('7b')"
    timeout 150 python3 bench/reference_pass.py --size 7b --data synthetic --seq 1024 --examples 32 --batch 4 \
      --quantize 4 --grad-checkpoint --repeat 2 2>&1 | tail -3 | tee "$OUT/h200_reference_pass.txt"
    timeout 120 python3 bench/reference_pass.py --size 7b --data synthetic --seq 512 --examples 32 --batch 4 \
      --repeat 2 2>&1 | tail -3 | tee "$OUT/h200_reference_pass_bf16.txt"
    timeout 170 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 2>&1 | tail -3 \
      | tee "$OUT/h200_whole_run_mac_preset.txt"
    ;;
  E)
    timeout 200 python3 bench/activation_memory.py --size 7b --batch 4 --seq 512 2>&1 | tee "$OUT/h200_activation_memory.txt"
    timeout 380 python3 bench/trl_peer.py --size 7b --batch 4 --seq 512 --steps 6 --warmup 3 \
      --only torch_sft,trl_kto,sft,kto 2>&1 | tail -12 | tee "$OUT/h200_trl_peer.txt"
    ;;
  F)
    timeout 500 python3 bench/trl_peer.py --size 7b --batch 4 --seq 512 --steps 6 --warmup 3 \
      --only sft,kto --compile off 2>&1 | tail -12 | tee "$OUT/h200_trl_peer_eager.txt"
    ;;
  G)
    row q4_b2_s1024_gc_layers 560 --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3
    ;;
  H)
    row q4_b2_s1024_gc_eager 330 --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3 \
      --only sft,kto --compile off
    for c in auto off; do
      timeout 120 python3 bench/reference_pass.py --size 7b --data synthetic --seq 1024 --examples 32 --batch 4 \
        --quantize 4 --grad-checkpoint --repeat 2 --compile $c 2>&1 | tail -3 | tee "$OUT/h200_reference_pass_$c.txt"
    done
    ;;
  I)
    timeout 200 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 2>&1 | tail -3 \
      | tee "$OUT/h200_whole_run_mac_preset_compile_layers.txt"
    timeout 300 python3 bench/reference_pass.py --size 7b --data sample --examples 300 --batch 4 --quantize 4 \
      --grad-checkpoint --repeat 1 2>&1 | tail -9 | tee "$OUT/h200_reference_pass_sample_unpadded.txt"
    ;;
  J)
    for c in on off; do
      timeout 250 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 --compile $c 2>&1 \
        | tail -1 | tee "$OUT/h200_whole_run_mac_preset_compile_$c.txt"
    done
    ;;
  K)
    for c in on off; do
      timeout 200 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 --compile $c \
        --no-grad-checkpoint 2>&1 | tail -1 | tee "$OUT/h200_whole_run_mac_preset_nogc_compile_$c.txt"
    done
    ;;
  L)
    timeout 60 python3 bench/optimizer_update.py 2>&1 | tail -1 | tee "$OUT/h200_optimizer_update.txt"
    timeout 200 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 2>&1 | tail -1 \
      | tee "$OUT/h200_whole_run_mac_preset_layer_load.txt"
    python3 -c "import sys; sys.path.insert(0, 'bench'); from quant_matmul import matmul_peak; \
print(f'bf16 matmul 8192^3: {matmul_peak(8192):.0f} TFLOP/s')" | tee "$OUT/h200_bf16_b4_s512_all_auto_peak.txt"
    row bf16_b4_s512_all_auto 200 --batch 4 --seq 512 --prompt-share 0 --steps 10 --warmup 4
    row bf16_b4_s512_all_off 90 --batch 4 --seq 512 --prompt-share 0 --steps 10 --warmup 4 --only sft --compile off
    ;;
  O)
    timeout 300 python3 bench/activation_memory.py --size 7b --batch 4 --seq 512 \
      --variants eager,eager_lean,eager_attention,eager_mlp,eager_mlp_lean 2>&1 | tee "$OUT/h200_activation_memory_parts.txt"
    timeout 280 python3 bench/forecast_7b.py 2>&1 | tail -20 | tee "$OUT/h200_forecast_7b_lean_one_kernel.txt"
    ;;
  P)
    timeout 230 python3 bench/forecast_7b.py 2>&1 | tail -16 | tee "$OUT/h200_forecast_7b.txt"
    python3 -c "import sys; sys.path.insert(0, 'bench'); from quant_matmul import matmul_peak; \
print(f'bf16 matmul 8192^3: {matmul_peak(8192):.0f} TFLOP/s')" | tee "$OUT/h200_bf16_b4_s512_all_peak.txt"
    row bf16_b4_s512_all 250 --batch 4 --seq 512 --prompt-share 0 --steps 10 --warmup 4
    ;;
  R)
    S="--batch 4 --seq 512 --prompt-share 0 --steps 8 --warmup 3 --only sft"
    for v in "MLX_MAX_OPS_PER_BUFFER=100 MLX_MAX_MB_PER_BUFFER=1000" "MLX_MAX_OPS_PER_BUFFER=20 MLX_MAX_MB_PER_BUFFER=100"; do
      for lean in "" --lean-backward; do
        echo "== $v $lean"; env $v timeout 100 $B $S $lean 2>&1 | grep '^{' | tee -a "$OUT/h200_bf16_sft_ab.txt"
      done
    done
    ;;
  U)
    timeout 150 python3 bench/matmul_floor.py 2>&1 | tail -1 | tee "$OUT/h200_matmul_floor.txt"
    S="--batch 4 --seq 512 --prompt-share 0 --steps 8 --warmup 3 --only sft"
    for lean in off on; do
      echo "== lean_backward $lean"; timeout 220 $B $S --lean-backward $lean 2>&1 | grep '^{' | tee -a "$OUT/h200_lean_parts.txt"
    done
    ;;
  V)
    S="--batch 4 --seq 512 --prompt-share 0 --steps 8 --warmup 3 --only sft"
    for lean in lora swiglu; do  # (swiglu_eager, the float32 kernels uncompiled, before 2026-12-02's fourth session)
      echo "== lean_backward $lean"; timeout 100 $B $S --lean-backward $lean 2>&1 | grep '^{' | tee -a "$OUT/h200_lean_parts.txt"
    done
    timeout 60 python3 bench/optimizer_update.py 2>&1 | tail -1 | tee "$OUT/h200_optimizer_update.txt"
    timeout 200 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 2>&1 | tail -1 \
      | tee "$OUT/h200_whole_run_mac_preset.txt"
    ;;
  W)
    timeout 120 python3 bench/swiglu_backward.py 2>&1 | tail -1 | tee "$OUT/h200_swiglu_backward.txt"
    timeout 300 python3 bench/reference_pass.py --size 7b --data sample --examples 300 --batch 4 --quantize 4 \
      --grad-checkpoint --repeat 2 2>&1 | tail -9 | tee "$OUT/h200_reference_pass_sample.txt"
    ;;
  X)
    timeout 120 python3 bench/swiglu_backward.py 2>&1 | tail -1 | tee "$OUT/h200_swiglu_backward.txt"
    S="--batch 4 --seq 512 --prompt-share 0 --steps 8 --warmup 3 --only sft"
    for lean in off on lora; do
      echo "== lean_backward $lean"; timeout 220 $B $S --lean-backward $lean 2>&1 | grep '^{' | tee -a "$OUT/h200_lean_parts.txt"
    done
    ;;
  Y)
    python3 -c "import sys; sys.path.insert(0, 'bench'); from quant_matmul import matmul_peak; \
print(f'bf16 matmul 8192^3: {matmul_peak(8192):.0f} TFLOP/s')" | tee "$OUT/h200_bf16_b4_s512_all_peak.txt"
    row bf16_b4_s512_all 400 --batch 4 --seq 512 --prompt-share 0 --steps 10 --warmup 4
    ;;
  Z)
    S="--batch 4 --seq 512 --prompt-share 0 --steps 10 --warmup 4 --compile on"
    for lean in on off; do
      echo "== compile on, lean_backward $lean"
      timeout 280 $B $S --only sft,kto --lean-backward $lean 2>&1 | grep '^{' | tee -a "$OUT/h200_bf16_b4_s512_compiled.txt"
    done
    ;;
  T)
    row q4_b2_s1024_gc 330 --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 5 --warmup 2
    ;;
  Q)
    timeout 60 python3 bench/optimizer_update.py 2>&1 | tail -1 | tee "$OUT/h200_optimizer_update.txt"
    timeout 200 python3 bench/whole_run.py --size 7b --examples 300 --iters 6 --eval-every 3 2>&1 | tail -1 \
      | tee "$OUT/h200_whole_run_mac_preset.txt"
    ;;
  N)
    timeout 200 python3 bench/step_phases.py --size 7b --quantize 4 2>&1 | tail -1 | tee "$OUT/h200_step_phases_q4.txt"
    ;&
  M)
    row q4_b2_s1024_gc_auto 330 --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3
    row q4_b2_s1024_gc_off 120 --batch 2 --seq 1024 --quantize 4 --grad-checkpoint --steps 6 --warmup 3 \
      --only sft --compile off
    ;;
esac
