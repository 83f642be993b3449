"""Backward passes that keep less for the training step: the MLPs' SwiGLU and the LoRA adapters' input.

SwiGLU (`silu(gate) * up`): mlx-lm's MLPs call a shapeless-compiled `swiglu`; differentiated, MLX keeps the
sigmoid and the silu of the gate beside the gate and the up projection (4 intermediate-sized arrays a token and
layer) and runs the backward as a chain of elementwise kernels. Here the forward is the same compiled expression
(the same values) and the backward is a `mx.custom_function` VJP: two shapeless-compiled kernels of (gate, up,
cotangent) that recompute the sigmoid in float32, so only gate and up are kept and the backward writes nothing but
the two gradients.

LoRA's input: mlx-lm's LoRALinear keeps its adapters in float32, so with bfloat16 activations `x @ lora_a`
casts x to float32 and MLX keeps that float32 copy (2 activation-sized units) for lora_a's gradient, once per
adapted projection (q and v each their own). `lora_input` keeps x as it is and casts it again in the backward
(exact: every bfloat16 is a float32), the same values both ways.

The training step uses them with train.lean_backward (off by default): they keep less but are slower, measured
on an H200 at 7B bf16 4 x 512 without checkpointing 28.5 -> 24.0 GB and 0.142 -> 0.176 s a step
(bench/results/h200_bf16_sft_ab.txt), and on this project's CPU no faster (the recomputed sigmoid; in float32
LoRA's input has no cast to save).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn


@partial(mx.compile, shapeless=True)
def _forward(gate: mx.array, up: mx.array) -> mx.array:
    return nn.silu(gate) * up


# Two single-output kernels: MLX's compile materialises the intermediates (the float32 sigmoid) that two
# outputs of one compiled function share, and one kernel each recomputes them instead.
@partial(mx.compile, shapeless=True)
def _gate_grad(gate: mx.array, up: mx.array, cotangent: mx.array) -> mx.array:
    g = gate.astype(mx.float32)
    s = mx.sigmoid(g)
    return (cotangent.astype(mx.float32) * up.astype(mx.float32) * s * (1 + g * (1 - s))).astype(gate.dtype)


@partial(mx.compile, shapeless=True)
def _up_grad(gate: mx.array, cotangent: mx.array) -> mx.array:
    g = gate.astype(mx.float32)
    return (cotangent.astype(mx.float32) * g * mx.sigmoid(g)).astype(gate.dtype)


@mx.custom_function
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """`silu(gate) * up`, differentiated from gate and up alone."""
    return _forward(gate, up)


@swiglu.vjp
def _swiglu_vjp(primals: tuple[mx.array, mx.array], cotangent: mx.array, _output: mx.array) -> tuple[mx.array, ...]:
    gate, up = primals
    return _gate_grad(gate, up, cotangent), _up_grad(gate, cotangent).astype(up.dtype)


@mx.custom_function
def lora_input(x: mx.array, a: mx.array) -> mx.array:
    """`x @ a` in a's dtype, differentiated from x as it is (module doc)."""
    return x.astype(a.dtype) @ a


@lora_input.vjp
def _lora_input_vjp(primals: tuple[mx.array, mx.array], cotangent: mx.array, _output: mx.array) -> tuple[mx.array, ...]:
    x, a = primals
    dx = (cotangent @ a.T).astype(x.dtype)
    da = mx.swapaxes(x.astype(a.dtype), -1, -2) @ cotangent  # [..., in, r], summed over the leading axes
    return dx, da.reshape(-1, *a.shape).sum(axis=0) if da.ndim > 2 else da


# The attribute names an MLP's __call__ uses when it is exactly `down_proj(swiglu(gate_proj(x), up_proj(x)))`
# (mlx-lm's llama, mistral, qwen2, ... MLP): only those are swapped, so that no other MLP changes meaning.
_PLAIN_NAMES = {"down_proj", "swiglu", "gate_proj", "up_proj"}
_LEAN: dict[type, type] = {}


def _lean_mlp_call(self: Any, x: mx.array) -> mx.array:
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def _lean_lora_call(self: Any, x: mx.array) -> mx.array:  # mlx-lm's LoRALinear.__call__ with lora_input
    y = self.linear(x)
    z = lora_input(self.dropout(x), self.lora_a) @ self.lora_b
    return y + (self.scale * z).astype(x.dtype)


def _is_plain(module: nn.Module) -> bool:
    call = getattr(type(module), "__call__", None)
    code = getattr(call, "__code__", None)
    return code is not None and set(code.co_names) == _PLAIN_NAMES and code.co_argcount == 2


def use(model: nn.Module, on: bool) -> int:
    """Whether every plain SwiGLU MLP and every LoRALinear of `model` has these backwards (its class swapped for
    a subclass; weights, names and forward values unchanged); the number of modules it applies to."""
    from mlx_lm.tuner.lora import LoRALinear

    n = 0
    for _, module in model.named_modules():
        cls = type(module)
        plain = next((p for p, lean in _LEAN.items() if lean is cls), None)
        if plain is None and (cls is LoRALinear or _is_plain(module)):
            plain = cls
            if cls not in _LEAN:  # one subclass per class, so that `use(..., False)` finds every swapped module
                call = _lean_lora_call if cls is LoRALinear else _lean_mlp_call
                _LEAN[cls] = type("Lean" + cls.__name__, (cls,), {"__call__": call})
        if plain is not None:
            module.__class__ = _LEAN[plain] if on else plain
            n += 1
    return n
