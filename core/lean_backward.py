"""Backward passes that keep less for the training step: the MLPs' SwiGLU and the LoRA adapters' input.

SwiGLU (`silu(gate) * up`): mlx-lm's MLPs call a shapeless-compiled `swiglu`; differentiated, MLX keeps the
sigmoid and the silu of the gate beside the gate and the up projection (4 intermediate-sized arrays a token and
layer). Here the forward is the same compiled expression and the backward a `mx.custom_function` VJP that redoes
that forward inside MLX's own VJP of it: only gate, up and the output are kept, and the gradients are MLX's
(the same kernels, the same values). A backward of two fused kernels recomputing the sigmoid in float32 kept as
little but was slower (H200, 32 frozen 7B MLPs at 2,048 tokens: 1.27x the plain backward's time, this one 1.00x;
bench/results/h200_swiglu_backward.txt).

LoRA's input: mlx-lm's LoRALinear keeps its adapters in float32, so with bfloat16 activations `x @ lora_a`
casts x to float32 and MLX keeps that float32 copy (2 activation-sized units) for lora_a's gradient, once per
adapted projection (q and v each their own). `lora_input` keeps x as it is and casts it again in the backward
(exact: every bfloat16 is a float32), the same values both ways.

The training step uses them with train.lean_backward (README: Performance has what each costs and saves).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn


@partial(mx.compile, shapeless=True)
def _forward(gate: mx.array, up: mx.array) -> mx.array:
    return nn.silu(gate) * up


@mx.custom_function
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """`silu(gate) * up`, its backward redoing the forward from gate and up."""
    return _forward(gate, up)


@swiglu.vjp
def _swiglu_vjp(primals: tuple[mx.array, mx.array], cotangent: mx.array, _output: mx.array) -> list[mx.array]:
    return mx.vjp(_forward, list(primals), [cotangent])[1]  # MLX's own backward, its forward redone


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


def is_plain_mlp(module: nn.Module) -> bool:
    """Whether `module`'s __call__ is exactly a plain SwiGLU MLP's (`_PLAIN_NAMES`)."""
    call = getattr(type(module), "__call__", None)
    code = getattr(call, "__code__", None)
    return code is not None and set(code.co_names) == _PLAIN_NAMES and code.co_argcount == 2


def wanted(setting: str, backend_kind: str, grad_checkpoint: bool) -> bool:
    """train.lean_backward: "on", "off", or "auto": on GPUs without checkpointing (H200, 7B bf16 4 x 512: the step
    keeps 5.3 GB less for 4% more time). Not under train.grad_checkpoint, where it can only cut one layer's working
    set (H200, 4-bit 2 x 1,024: 6.44 GB on against 6.40 off), nor on CPUs (the recomputed sigmoid costs 11-15% of
    the tiny model's step, and float32 LoRA has no cast to save)."""
    return setting == "on" or (setting == "auto" and backend_kind != "cpu" and not grad_checkpoint)


def swap_classes(model: nn.Module, on: bool, swapped: dict[type, type], prefix: str,
                 call_for: Callable[[nn.Module], Callable[..., Any] | None]) -> int:
    """Swap each module of `model` for which `call_for` gives a __call__ to a subclass with it (on), or back to
    its class (off); one subclass per class, kept in `swapped`, so that turning it off finds every swapped
    module. The number of modules it applies to."""
    n = 0
    for _, module in model.named_modules():
        cls = type(module)
        plain = next((p for p, sub in swapped.items() if sub is cls), None)
        if plain is None and (call := call_for(module)) is not None:
            plain = cls
            swapped.setdefault(cls, type(prefix + cls.__name__, (cls,), {"__call__": call}))
        if plain is not None:
            module.__class__ = swapped[plain] if on else plain
            n += 1
    return n


def use(model: nn.Module, on: bool) -> int:
    """Whether every plain SwiGLU MLP and every LoRALinear of `model` has these backwards (its class swapped for
    a subclass; weights, names and forward values unchanged); the number of modules it applies to."""
    from mlx_lm.tuner.lora import LoRALinear

    def call_for(module: nn.Module) -> Callable[..., Any] | None:
        if type(module) is LoRALinear:
            return _lean_lora_call
        return _lean_mlp_call if is_plain_mlp(module) else None

    return swap_classes(model, on, _LEAN, "Lean", call_for)
