"""What SwiGLU's backward costs: a chain of frozen Mistral-7B MLPs, forward and backward, three ways.

"plain" is mlx-lm's MLP (its shapeless-compiled swiglu, differentiated by MLX); "lean" is core.lean_backward's
(a custom VJP of two compiled kernels that recompute the sigmoid); "custom" is a custom_function whose VJP is
MLX's own VJP of the same expression (what wrapping alone costs). The gradient is taken with respect to the
chain's input, as a step's backward runs through frozen layers. Each variant: the fastest of --reps after a
warm-up, and its peak memory. Prints one JSON object.

    python bench/swiglu_backward.py                                   # on the device machine, 7B shape
    python bench/swiglu_backward.py --layers 2 --tokens 64 --hidden 256 --intermediate 768 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import time
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

    from tunedeck.core import lean_backward

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

    @mx.custom_function
    def custom(gate: mx.array, up: mx.array) -> mx.array:
        return plain_swiglu(gate, up)

    @custom.vjp
    def _custom_vjp(primals: Any, cotangent: mx.array, _output: mx.array) -> Any:
        return mx.vjp(lambda a, b: nn.silu(a) * b, list(primals), [cotangent])[1]

    def custom_call(self: Any, h: mx.array) -> mx.array:
        return self.down_proj(custom(self.gate_proj(h), self.up_proj(h)))

    def chain(h: mx.array) -> mx.array:
        for m in mlps:
            h = h + m(h)
        return (h * g).astype(mx.float32).sum()

    grad = mx.grad(chain)
    out: dict[str, Any] = {"layers": args.layers, "tokens": args.tokens, "dtype": args.dtype,
                           "device": str(mx.default_device())}
    plain_class = type(mlps[0])
    custom_class = type("CustomMLP", (plain_class,), {"__call__": custom_call})
    for name in ("plain", "lean", "custom", "plain_again"):
        for m in mlps:
            m.__class__ = {"custom": custom_class}.get(name, plain_class)
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
    out["custom_over_plain"] = round(out["custom"]["seconds"] / out["plain"]["seconds"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
