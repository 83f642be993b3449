"""Why is 4-bit LoRA training slower than bf16? The quantized matmul, forward and backward, against bf16.

For each projection of a Mistral-7B layer, at M tokens (default 2 x 1024), times on the default device:
the bf16 matmul x @ W^T and its input gradient g @ W, the 4-bit (group 64) `quantized_matmul`
forward and the input gradient MLX's autodiff runs for it, and the same through the weight dequantized to
bf16 first (core.layerwise, model.quantized_matmul = "dequantize") (`mx.grad` of sum(f(x) * g): the gradient
does not need f(x), so this times the VJP alone). A frozen base needs no weight gradient, so these are the step's base-model matmuls. Prints
one line per projection and, last, one JSON object with the per-layer totals and ratios.

    python bench/quant_matmul.py              # on the device machine (CUDA) or a Mac (Metal)
"""

from __future__ import annotations

import argparse
import json
import time

import mlx.core as mx

PROJECTIONS = {  # name: (in, out) for Mistral-7B-v0.3
    "q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096),
    "gate_proj": (4096, 14336), "up_proj": (4096, 14336), "down_proj": (14336, 4096),
}


def timed(fn, reps: int) -> float:
    for _ in range(3):
        mx.eval(fn())
    mx.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t0) / reps


def matmul_peak(n: int) -> float:
    """MLX's bf16 matmul throughput at n x n x n, TFLOP/s, mean of 10 after warm-up."""
    a, b = (mx.random.normal((n, n)).astype(mx.bfloat16) for _ in range(2))
    mx.eval(a, b)
    return 2 * n**3 / timed(lambda: a @ b, 10) / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--peak-size", type=int, default=8192, help="the square bf16 matmul timed for MLX's peak")
    args = p.parse_args()
    m = args.tokens
    peak = matmul_peak(args.peak_size)
    print(f"bf16 matmul {args.peak_size}^3: {peak:.0f} TFLOP/s (mean of 10)", flush=True)
    totals = {"bf16_fwd": 0.0, "bf16_bwd": 0.0, "q_fwd": 0.0, "q_bwd": 0.0, "dq_fwd": 0.0, "dq_bwd": 0.0}
    for name, (k, n) in PROJECTIONS.items():
        w = (mx.random.normal((n, k)) * 0.02).astype(mx.bfloat16)
        wq, scales, biases = mx.quantize(w, group_size=64, bits=args.bits)
        x = mx.random.normal((m, k)).astype(mx.bfloat16)
        g = mx.random.normal((m, n)).astype(mx.bfloat16)
        mx.eval(w, wq, scales, biases, x, g)

        def qmm(a):
            return mx.quantized_matmul(a, wq, scales, biases, transpose=True, group_size=64, bits=args.bits)

        def dqmm(a):  # core.layerwise's model.quantized_matmul = "dequantize"
            return a @ mx.dequantize(wq, scales, biases, group_size=64, bits=args.bits, dtype=a.dtype).T

        q_grad = mx.grad(lambda a: (qmm(a) * g).astype(mx.float32).sum())
        dq_grad = mx.grad(lambda a: (dqmm(a) * g).astype(mx.float32).sum())
        b_grad = mx.grad(lambda a: ((a @ w.T) * g).astype(mx.float32).sum())
        t = {"bf16_fwd": timed(lambda: x @ w.T, args.reps), "q_fwd": timed(lambda: qmm(x), args.reps)}
        t["bf16_bwd"] = timed(lambda: b_grad(x), args.reps)
        t["q_bwd"] = timed(lambda: q_grad(x), args.reps)
        t["dq_fwd"], t["dq_bwd"] = timed(lambda: dqmm(x), args.reps), timed(lambda: dq_grad(x), args.reps)
        flop = 2 * m * k * n
        print(f"{name:10} bf16 fwd {flop / t['bf16_fwd'] / 1e12:6.0f} TFLOP/s  bwd {flop / t['bf16_bwd'] / 1e12:6.0f}"
              f" | {args.bits}-bit fwd {flop / t['q_fwd'] / 1e12:6.0f}  bwd {flop / t['q_bwd'] / 1e12:6.0f}"
              f" | q/bf16 fwd {t['q_fwd'] / t['bf16_fwd']:.2f}x bwd {t['q_bwd'] / t['bf16_bwd']:.2f}x"
              f" | dequantized/bf16 fwd {t['dq_fwd'] / t['bf16_fwd']:.2f}x bwd {t['dq_bwd'] / t['bf16_bwd']:.2f}x", flush=True)
        for key in totals:
            totals[key] += t[key]
    out = {k: round(v * 1e3, 3) for k, v in totals.items()} | {
        "tokens": m, "bits": args.bits, "device": str(mx.default_device()),
        "q_over_bf16_fwd": round(totals["q_fwd"] / totals["bf16_fwd"], 2),
        "q_over_bf16_bwd": round(totals["q_bwd"] / totals["bf16_bwd"], 2),
        "q_over_bf16_layer": round((totals["q_fwd"] + totals["q_bwd"]) / (totals["bf16_fwd"] + totals["bf16_bwd"]), 2),
        "dequantized_over_bf16_layer": round((totals["dq_fwd"] + totals["dq_bwd"]) / (totals["bf16_fwd"] + totals["bf16_bwd"]), 2),
        "matmul_peak_tflops": round(peak, 1), "peak_size": args.peak_size,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
