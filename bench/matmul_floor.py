"""How fast can a 7B bf16 LoRA step be on this device? Its base-model matmuls alone, at the step's own shapes.

A frozen base needs no weight gradients, so a training step's big matmuls are, per layer, the forward's seven
projections (x @ W^T) and their input gradients (g @ W), plus the output head both ways; LoRA's rank-16 products
and everything elementwise come on top. This times exactly those matmuls for --layers distinct random bf16
layers of Mistral-7B-v0.3's shape at --tokens tokens, all in one evaluation as a step queues them, then causal
attention (`mx.fast.scaled_dot_product_attention`) forward and backward at --batch rows, and MLX's square matmul
peak in the same process (quant_matmul.matmul_peak). Timings: the fastest of --reps after a warm-up. Prints one JSON object:
`floor_over_peak` is the best a step's matmuls reach as a share of MLX's square-matmul peak; a step's own
TFLOP/s (4 x 7.25 G FLOP a token plus its attention, README) divided by `matmul_tflops` is how close the rest
of the step comes to that floor.

    python bench/matmul_floor.py                     # on the device machine: 4 x 512 tokens, 32 layers
    python bench/matmul_floor.py --layers 1 --tokens 64 --batch 2 --peak-size 256 --dtype float32   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS = 4096, 14336, 32768, 32, 8
HEAD_DIM = HIDDEN // HEADS
PROJECTIONS = {  # (in, out), Mistral-7B-v0.3
    "q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV_HEADS * HEAD_DIM), "v_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
    "o_proj": (HIDDEN, HIDDEN), "gate_proj": (HIDDEN, INTERMEDIATE), "up_proj": (HIDDEN, INTERMEDIATE),
    "down_proj": (INTERMEDIATE, HIDDEN),
}


def fastest(fn: Callable[[], list[mx.array]], reps: int) -> float:
    """The fastest of `reps` evaluations of fn's outputs, after one warm-up, in seconds."""
    mx.eval(fn())
    best = float("inf")
    for _ in range(reps):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(fn())
        mx.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


DTYPE = {"bfloat16": mx.bfloat16, "float32": mx.float32}


def rand(shape: tuple[int, ...], dtype: mx.Dtype) -> mx.array:
    return (mx.random.normal(shape) * 0.02).astype(dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="tokens a step (batch x sequence length)")
    p.add_argument("--batch", type=int, default=4, help="rows, for attention")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--peak-size", type=int, default=8192)
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPE), help="the matmuls' (the peak is bf16's)")
    args = p.parse_args()
    dt = DTYPE[args.dtype]
    n, seq = args.tokens, args.tokens // args.batch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quant_matmul import matmul_peak

    peak = matmul_peak(args.peak_size)  # as the bf16 rows' calls measure it
    layers = [{name: rand((o, i), dt) for name, (i, o) in PROJECTIONS.items()} for _ in range(args.layers)]
    head = rand((VOCAB, HIDDEN), dt)
    x, h = rand((n, HIDDEN), dt), rand((n, INTERMEDIATE), dt)
    grads = {name: rand((n, o), dt) for name, (_, o) in PROJECTIONS.items()}
    g_head = rand((n, VOCAB), dt)
    mx.eval(layers, head, x, h, grads, g_head)

    def matmuls() -> list[mx.array]:
        out = []
        for w in layers:
            for name, (i, _) in PROJECTIONS.items():
                inp = h if i == INTERMEDIATE else x
                out += [inp @ w[name].T, grads[name] @ w[name]]
        return out + [x @ head.T, g_head @ head]

    t_mm = fastest(matmuls, args.reps)
    flop_mm = 2 * 2 * n * (args.layers * sum(i * o for i, o in PROJECTIONS.values()) + HIDDEN * VOCAB)

    q = rand((args.batch, HEADS, seq, HEAD_DIM), dt) * 50
    k, v = (rand((args.batch, KV_HEADS, seq, HEAD_DIM), dt) * 50 for _ in range(2))
    ct = rand(q.shape, dt) * 50
    mx.eval(q, k, v, ct)

    def attention(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=HEAD_DIM**-0.5, mask="causal")

    def attentions() -> list[mx.array]:
        out = []
        for _ in range(args.layers):
            o, vjps = mx.vjp(attention, [q, k, v], [ct])
            out += [*o, *vjps]
        return out

    t_att = fastest(attentions, args.reps)
    flop_att = args.layers * 3 * 2 * 2 * args.batch * HEADS * seq * seq * HEAD_DIM / 2  # causal: half the scores
    floor = flop_mm / t_mm / 1e12
    print(json.dumps({
        "device": str(mx.default_device()), "tokens": n, "batch": args.batch, "layers": args.layers,
        "peak_size": args.peak_size, "matmul_peak_tflops": round(peak, 1),
        "matmul_s": round(t_mm, 5), "matmul_tflop": round(flop_mm / 1e12, 2), "matmul_tflops": round(floor, 1),
        "floor_over_peak": round(floor / peak, 3),
        "attention_s": round(t_att, 5), "attention_tflop": round(flop_att / 1e12, 3),
        "matmul_and_attention_s": round(t_mm + t_att, 5),
        "floor_tflops_with_attention": round((flop_mm + flop_att) / (t_mm + t_att) / 1e12, 1),
        "floor_with_attention_over_peak": round((flop_mm + flop_att) / (t_mm + t_att) / 1e12 / peak, 3),
    }))


if __name__ == "__main__":
    main()
