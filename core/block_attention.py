"""Causal attention a block of queries at a time, for CPUs.

MLX's attention on the CPU computes every score of a causal mask, the masked-out upper triangle included, and
its float32 softmax `exp` is the CPU's costliest element-wise operation (bench/results: ~18 ns an element on
this project's AMD EPYC). Queries [s, e) only need the keys [0, e): computed a block of QUERY_CHUNK queries at a
time, a length-L row skips about (L - QUERY_CHUNK) / 2L of the scores (the 47M model's SFT step at 4 x 256
measured ~8% faster, the tiny model's reference pass ~30%). The result is the same attention (MLX's "causal"
aligns the last query with the last key, so each block's mask is exact), only split by rows.

`use(model, True)` switches mlx-lm's llama/mistral attention modules of a model to it for uncached or
offset-0 (recording) calls; generation with a filled cache runs mlx-lm's own. GPUs keep MLX's fused attention,
which skips the masked blocks itself.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

QUERY_CHUNK = 64


def chunk_for(backend_kind: str) -> int:
    """The query block for this backend: QUERY_CHUNK on CPUs, 0 (whole) elsewhere."""
    return QUERY_CHUNK if backend_kind == "cpu" else 0


def causal(q: mx.array, k: mx.array, v: mx.array, scale: float, chunk: int) -> mx.array:
    """Causal attention of q [B, h, L, d] over k, v [B, kv, L, d]; with `chunk`, a block of queries at a time
    against the keys up to the block's end (module doc)."""
    width = q.shape[2]
    if not chunk or width <= chunk:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    return mx.concatenate([mx.fast.scaled_dot_product_attention(q[:, :, s : s + chunk], k[:, :, : s + chunk],
                                                                v[:, :, : s + chunk], scale=scale, mask="causal")
                           for s in range(0, width, chunk)], axis=2)


_BLOCKED: dict[type, type] = {}


def _blocked(cls: type) -> type:
    """A subclass of mlx-lm's llama Attention `cls` whose causal calls run `causal` in blocks."""
    if cls not in _BLOCKED:
        def __call__(self: Any, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
            offset = getattr(cache, "offset", 0)
            if (not (isinstance(mask, str) and mask == "causal") or not isinstance(offset, int) or offset
                    or hasattr(cache, "bits")):  # a quantized KV cache: mlx-lm's own attention reads it
                return cls.__call__(self, x, mask, cache)
            b, n, _ = x.shape
            q = self.q_proj(x).reshape(b, n, self.n_heads, -1).transpose(0, 2, 1, 3)
            k = self.k_proj(x).reshape(b, n, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            v = self.v_proj(x).reshape(b, n, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
            q, k = self.rope(q), self.rope(k)
            if cache is not None:
                k, v = cache.update_and_fetch(k, v)
            out = causal(q, k, v, self.scale, QUERY_CHUNK)
            return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))

        _BLOCKED[cls] = type(f"BlockCausal{cls.__name__}", (cls,), {"__call__": __call__})
    return _BLOCKED[cls]


def use(model: nn.Module, on: bool) -> None:
    """Whether the model's llama/mistral attention modules compute causal attention in query blocks."""
    from mlx_lm.models.llama import Attention  # mlx_lm's package loads transformers: seconds

    for layer in getattr(getattr(model, "model", None), "layers", []):
        attn = getattr(layer, "self_attn", None)
        if isinstance(attn, Attention):
            attn.__class__ = _blocked(Attention) if on else Attention
