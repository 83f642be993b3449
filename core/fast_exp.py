"""Softmax, logsumexp and SwiGLU for CPUs with `exp(x)` as `power(2, x·log₂e)`, each with its own backward.

MLX's x86 `exp` (and with it its softmax and sigmoid) costs ~14 ns an element on this project's AMD EPYC CI
machine, `power(2, x·log₂e)` ~6, with the same error bound against float64 (max relative error 3.3e-6 over
|x| ≤ 40 for both: MLX's exp is a base-2 computation too, its values differ from these in the last bits of 7% of
elements). Attention's softmax and the MLPs' sigmoid are most of a small model's element-wise work on a CPU
(the 47M demo model's SFT step at 4 x 256: ~40% attention, ~16% SwiGLU; with these 1.17 -> 1.24-1.46x mlx-lm's
speed, README: Performance), so the CPU training path uses:

- `softmax`: max, the shifted power and its sum, the normalisation; its backward `p * (dp - sum(dp * p))`
  reads the output only (MLX's own softmax VJP does the same).
- `logsumexp` (the float32 log-softmax of the output head): its backward `exp(x - lse) * g`, as MLX's.
- `swiglu`: `silu(gate) * up` in one compiled kernel; its backward recomputes the sigmoid from gate inside one
  compiled kernel, so only gate and up are kept (as core.lean_backward's).

`use(model, on)` swaps every plain mlx-lm SwiGLU MLP of a model (core.lean_backward's test of "plain") to
`swiglu`; core.block_attention's CPU attention uses `softmax`, core.losses' log-probs `logsumexp`, both where
`here()`. GPUs keep MLX's fused kernels.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn

LOG2E = 1.4426950408889634


def wanted(backend_kind: str) -> bool:
    """Whether this backend's training uses these (its MLPs are swapped at load): CPUs only."""
    return backend_kind == "cpu"


def here() -> bool:
    """Whether arrays are computed on the CPU (MLX's default device): where attention and the log-softmax take
    these instead of MLX's kernels."""
    return mx.default_device() == mx.cpu


@partial(mx.compile, shapeless=True)
def _shifted_exp(s: mx.array, m: mx.array) -> mx.array:
    return mx.power(2.0, (s - m) * LOG2E)


@partial(mx.compile, shapeless=True)
def _normalized(e: mx.array, z: mx.array) -> mx.array:
    return e * mx.reciprocal(z)


@partial(mx.compile, shapeless=True)
def _softmax_grad(p: mx.array, dp: mx.array, dot: mx.array) -> mx.array:
    return p * (dp - dot)


def softmax_backward(p: mx.array, dp: mx.array) -> mx.array:
    """The gradient of the softmax's input from its output `p` and the gradient of `p`."""
    return _softmax_grad(p, dp, (dp * p).sum(axis=-1, keepdims=True))


@mx.custom_function
def softmax(s: mx.array) -> mx.array:
    """Softmax over the last axis (float32); -inf entries get 0, a row needs one finite entry."""
    e = _shifted_exp(s, mx.stop_gradient(mx.max(s, axis=-1, keepdims=True)))
    return _normalized(e, e.sum(axis=-1, keepdims=True))


@softmax.vjp
def _softmax_vjp(_s: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
    return softmax_backward(output, cotangent)


@partial(mx.compile, shapeless=True)
def _logsumexp_grad(x: mx.array, lse: mx.array, cotangent: mx.array) -> mx.array:
    return mx.power(2.0, (x - lse) * LOG2E) * cotangent


@mx.custom_function
def logsumexp(x: mx.array) -> mx.array:
    """log(sum(exp(x))) over the last axis (finite x)."""
    m = mx.stop_gradient(mx.max(x, axis=-1, keepdims=True))
    return (mx.log(_shifted_exp(x, m).sum(axis=-1, keepdims=True)) + m).squeeze(-1)


@logsumexp.vjp
def _logsumexp_vjp(x: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
    return _logsumexp_grad(x, output[..., None], cotangent[..., None])  # (one argument: MLX passes it as is)


def _sigmoid(x: mx.array) -> mx.array:
    """Traced into the compiled kernels below; a reciprocal, ~3 ns an element cheaper here than a division."""
    return mx.reciprocal(1.0 + mx.power(2.0, x * -LOG2E))


@partial(mx.compile, shapeless=True)
def _swiglu_forward(gate: mx.array, up: mx.array) -> mx.array:
    return gate * _sigmoid(gate) * up


@partial(mx.compile, shapeless=True)
def _swiglu_backward(gate: mx.array, up: mx.array, cotangent: mx.array) -> tuple[mx.array, mx.array]:
    sig = _sigmoid(gate)
    return cotangent * up * sig * (1.0 + gate * (1.0 - sig)), cotangent * gate * sig


@mx.custom_function
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """`silu(gate) * up`, its backward recomputing the sigmoid (module doc)."""
    return _swiglu_forward(gate, up)


@swiglu.vjp
def _swiglu_vjp(primals: tuple[mx.array, mx.array], cotangent: mx.array, _output: mx.array) -> tuple[mx.array, ...]:
    return _swiglu_backward(*primals, cotangent)


_FAST: dict[type, type] = {}


def _fast_mlp_call(self: Any, x: mx.array) -> mx.array:
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def use(model: nn.Module, on: bool) -> int:
    """Whether every plain SwiGLU MLP of `model` computes `swiglu` (its class swapped for a subclass; weights and
    names unchanged); the number of MLPs it applies to."""
    from .lean_backward import is_plain_mlp, swap_classes

    return swap_classes(model, on, _FAST, "FastExp", lambda m: _fast_mlp_call if is_plain_mlp(m) else None)
