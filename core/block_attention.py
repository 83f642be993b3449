"""Attention for CPUs: causal attention a block of queries at a time, each through a softmax of core.fast_exp.

MLX's attention on the CPU computes every score of a causal mask, the masked-out upper triangle included, and
its float32 softmax `exp` is the CPU's costliest element-wise operation (~14 ns an element on this project's
AMD EPYC). Queries [s, e) only need the keys [0, e): computed a block of QUERY_CHUNK queries at a time, a
length-L row skips about (L - QUERY_CHUNK) / 2L of the scores (the 47M model's SFT step at 4 x 256 measured ~8%
faster, the tiny model's reference pass ~30%). The result is the same attention, only split by rows.

`attention` is MLX's fused kernel on GPUs; on CPUs one `mx.custom_function` (grouped-query scores, the mask,
core.fast_exp's softmax, the values) whose backward keeps only q, k, v and the probabilities, as MLX's own
unfused CPU attention does, with the softmax's `exp` at less than half the cost (47M SFT step at 4 x 256, one
layer's attention forward and backward: 50 -> 39 ms, the forward 32 -> 20).

`use(model, True)` switches mlx-lm's llama/mistral attention modules of a model to these for every call but
a quantized KV cache's (mlx-lm's own reads it). GPUs keep MLX's fused attention, which skips the masked blocks
itself.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import fast_exp

QUERY_CHUNK = 64


def chunk_for(backend_kind: str) -> int:
    """The query block for this backend: QUERY_CHUNK on CPUs, 0 (whole) elsewhere."""
    return QUERY_CHUNK if backend_kind == "cpu" else 0


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: Any = None) -> mx.array:
    """Attention of q [B, h, Lq, d] over k, v [B, kv, Lk, d] (kv divides h) with a mask as MLX's
    `scaled_dot_product_attention` takes it: None, "causal" (the last query aligned with the last key), a boolean
    array (True: attends) or an additive one, broadcastable to [B, h, Lq, Lk]."""
    if not fast_exp.here():
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    return _grouped(q, k, v, scale, _bias(mask, q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.dtype))


def _bias(mask: Any, h: int, kv: int, lq: int, lk: int, dtype: mx.Dtype) -> mx.array | None:
    """The mask as an additive array broadcastable to the grouped scores [B, kv, h / kv, Lq, Lk]."""
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask {mask!r}")
        mask = mx.arange(lk)[None] <= mx.arange(lq)[:, None] + (lk - lq)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if mask.shape[1] == 1:
        mask = mx.expand_dims(mask, 2)
    else:
        mask = mx.broadcast_to(mask, (mask.shape[0], h, *mask.shape[2:])).reshape(mask.shape[0], kv, h // kv,
                                                                                  *mask.shape[2:])
    if mask.dtype == mx.bool_:
        return mx.where(mask, mx.array(0.0, dtype), mx.array(-mx.inf, dtype))
    return mask.astype(dtype)


def _grouped(q: mx.array, k: mx.array, v: mx.array, scale: float, bias: mx.array | None) -> mx.array:
    """`attention` on a CPU: each kv head's queries in one product, the probabilities kept for the backward."""
    b, h, lq, d = q.shape
    kv = k.shape[1]
    shape = (b, kv, h // kv, lq, d)

    @mx.custom_function
    def fn(q: mx.array, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        s = (q.reshape(shape) * scale) @ mx.expand_dims(k, 2).swapaxes(-1, -2)
        p = fast_exp.softmax(s if bias is None else s + bias)
        return (p @ mx.expand_dims(v, 2)).reshape(b, h, lq, d), p

    @fn.vjp
    def fn_vjp(primals: tuple[mx.array, ...], cotangents: tuple[mx.array, mx.array],
               outputs: tuple[mx.array, mx.array]) -> tuple[mx.array, ...]:
        q, k, v = primals
        p, do = outputs[1], cotangents[0].reshape(shape)
        ds = fast_exp.softmax_backward(p, do @ mx.expand_dims(v, 2).swapaxes(-1, -2))
        dq = ((ds @ mx.expand_dims(k, 2)) * scale).reshape(b, h, lq, d)
        dk = (ds.swapaxes(-1, -2) @ (q.reshape(shape) * scale)).sum(axis=2)
        dv = (p.swapaxes(-1, -2) @ do).sum(axis=2)
        return dq, dk, dv

    return fn(q, k, v)[0]


def causal(q: mx.array, k: mx.array, v: mx.array, scale: float, chunk: int) -> mx.array:
    """Causal attention of q [B, h, Lq, d] over k, v [B, kv, Lk, d], Lk >= Lq (the last query at the last key);
    with `chunk`, a block of queries at a time against the keys up to the block's end (module doc)."""
    width, shift = q.shape[2], k.shape[2] - q.shape[2]
    if not chunk or width <= chunk:
        return attention(q, k, v, scale, "causal")
    return mx.concatenate([attention(q[:, :, s : s + chunk], k[:, :, : shift + s + chunk],
                                     v[:, :, : shift + s + chunk], scale, "causal")
                           for s in range(0, width, chunk)], axis=2)


_BLOCKED: dict[type, type] = {}


def _blocked(cls: type) -> type:
    """A subclass of mlx-lm's llama Attention `cls` whose calls run `causal` in blocks, or `attention`."""
    if cls not in _BLOCKED:
        def __call__(self: Any, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
            if hasattr(cache, "bits"):  # a quantized KV cache: mlx-lm's own attention reads it
                return cls.__call__(self, x, mask, cache)
            b, n, _ = x.shape
            q = self.q_proj(x).reshape(b, n, self.n_heads, -1).transpose(0, 2, 1, 3)
            k = self.k_proj(x).reshape(b, n, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            v = self.v_proj(x).reshape(b, n, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            if cache is not None:  # as mlx-lm's: rotated at the cache's offset, then its keys/values
                q, k = self.rope(q, offset=cache.offset), self.rope(k, offset=cache.offset)
                k, v = cache.update_and_fetch(k, v)
            else:
                q, k = self.rope(q), self.rope(k)
            if isinstance(mask, str) and mask == "causal":
                out = causal(q, k, v, self.scale, QUERY_CHUNK)
            else:
                out = attention(q, k, v, self.scale, mask)
            return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))

        _BLOCKED[cls] = type(f"BlockCausal{cls.__name__}", (cls,), {"__call__": __call__})
    return _BLOCKED[cls]


def use(model: nn.Module, on: bool) -> None:
    """Whether the model's llama/mistral attention modules compute attention as this module does."""
    from mlx_lm.models.llama import Attention  # mlx_lm's package loads transformers: seconds

    for layer in getattr(getattr(model, "model", None), "layers", []):
        attn = getattr(layer, "self_attn", None)
        if isinstance(attn, Attention):
            attn.__class__ = _blocked(Attention) if on else Attention
