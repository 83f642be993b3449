"""What SwiGLU's backward costs: a chain of frozen Mistral-7B MLPs, forward and backward, four ways.

"plain" is mlx-lm's MLP (its shapeless-compiled swiglu, differentiated by MLX); "lean" is core.lean_backward's
(a custom VJP that redoes the compiled forward inside MLX's VJP of it); "eager_vjp" the same with the expression
uncompiled; "float32_kernels" core.lean_backward's earlier VJP (two compiled kernels recomputing the sigmoid in
float32). CUDA's graph limits as the trainer sets them. The gradient is taken with respect to the
chain's input, as a step's backward runs through frozen layers. Each variant: the fastest of --reps after a
warm-up, and its peak memory. Prints one JSON object.

    python bench/swiglu_backward.py                                   # on the device machine, 7B shape
    python bench/swiglu_backward.py --layers 2 --tokens 64 --hidden 256 --intermediate 768 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    from mlx_lm.models.activations import swiglu as plain_swiglu
    from mlx_lm.models.llama import MLP, ModelArgs

    from tunedeck.core import backend, lean_backward

    backend.limit_cuda_graphs()  # as the trainer
    dt = getattr(mx, args.dtype)
    margs = ModelArgs(model_type="llama", hidden_size=args.hidden, num_hidden_layers=args.layers,
                      intermediate_size=args.intermediate, num_attention_heads=8, rms_norm_eps=1e-5,
                      vocab_size=32, num_key_value_heads=8)
    mlps = [MLP(margs) for _ in range(args.layers)]
    for m in mlps:
        m.set_dtype(dt)
        m.freeze()
    mx.eval([m.parameters() for m in mlps])
    x = (mx.random.normal((args.tokens, args.hidden)) * 0.5).astype(dt)
    g = mx.random.normal((args.tokens, args.hidden)).astype(dt)
    mx.eval(x, g)

    def wrapped(vjp: Any) -> Any:
        """An MLP class whose swiglu is a custom_function with this VJP."""
        fn = mx.custom_function(lambda gate, up: plain_swiglu(gate, up))
        fn.vjp(vjp)
        return type("CustomMLP", (type(mlps[0]),), {"__call__": lambda self, h: self.down_proj(
            fn(self.gate_proj(h), self.up_proj(h)))})

    def eager_vjp(primals: Any, cotangent: mx.array, _output: mx.array) -> Any:
        return mx.vjp(lambda a, b: nn.silu(a) * b, list(primals), [cotangent])[1]

    def float32_kernels_vjp(primals: Any, cotangent: mx.array, _output: mx.array) -> Any:
        return _gate_grad(*primals, cotangent), _up_grad(primals[0], cotangent).astype(primals[1].dtype)

    def chain(h: mx.array) -> mx.array:
        for m in mlps:
            h = h + m(h)
        return (h * g).astype(mx.float32).sum()

    grad = mx.grad(chain)
    out: dict[str, Any] = {"layers": args.layers, "tokens": args.tokens, "dtype": args.dtype,
                           "device": str(mx.default_device())}
    plain_class = type(mlps[0])
    classes = {"eager_vjp": wrapped(eager_vjp), "float32_kernels": wrapped(float32_kernels_vjp)}
    for name in ("plain", "lean", "eager_vjp", "float32_kernels", "plain_again"):
        for m in mlps:
            m.__class__ = classes.get(name, plain_class)
        if name == "lean":
            lean_backward.use(nn.Sequential(*mlps), True)
        mx.eval(grad(x))
        mx.synchronize()
        mx.clear_cache()
        mx.reset_peak_memory()
        best = float("inf")
        for _ in range(args.reps):
            mx.synchronize()
            t0 = time.perf_counter()
            mx.eval(grad(x))
            mx.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[name] = {"seconds": round(best, 5), "peak_gb": round(mx.get_peak_memory() / 1e9, 3)}
        if name == "lean":
            lean_backward.use(nn.Sequential(*mlps), False)
    out["lean_over_plain"] = round(out["lean"]["seconds"] / out["plain"]["seconds"], 3)
    for name in ("eager_vjp", "float32_kernels"):
        out[f"{name}_over_plain"] = round(out[name]["seconds"] / out["plain"]["seconds"], 3)
    print(json.dumps(out))


@partial(mx.compile, shapeless=True)
def _gate_grad(gate: mx.array, up: mx.array, cotangent: mx.array) -> mx.array:  # core.lean_backward's before
    g = gate.astype(mx.float32)
    s = mx.sigmoid(g)
    return (cotangent.astype(mx.float32) * up.astype(mx.float32) * s * (1 + g * (1 - s))).astype(gate.dtype)


@partial(mx.compile, shapeless=True)
def _up_grad(gate: mx.array, cotangent: mx.array) -> mx.array:
    g = gate.astype(mx.float32)
    return (cotangent.astype(mx.float32) * g * mx.sigmoid(g)).astype(gate.dtype)


if __name__ == "__main__":
    main()
