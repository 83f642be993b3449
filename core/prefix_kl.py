"""KTO's KL pairs computed on top of the policy's own forward pass, sharing the prompt.

The KL pair of example i is its prompt x_i followed by another example's completion y_j. Its tokens
up to the end of x_i are example i's own first tokens, and under causal attention the keys and
values at those positions depend on nothing after them. So the policy forward of example i already
holds everything the KL pair needs for its prompt: the KL pass only has to run y_j, attending to
those cached keys/values (read with no gradient) at RoPE positions continuing from |x_i|. The first
token of y_j is predicted from the policy's hidden state at the prompt's last position.

This replaces a full second forward over x_i + y_j by one over y_j alone. The result is the same
log-probability up to floating-point rounding (tested against the separate forward). Used for
models whose attention follows mlx-lm's llama/mistral/qwen cache protocol (`cache.offset`,
`update_and_fetch`, `make_mask`), without sliding-window layers, and for batches where every KL
pair's prompt tokens equal its example's (prompt truncation can make them differ).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import dequantize, layerwise
from .layer_compile import Recorder
from .losses import LLAMA_BLOCK, head, hidden_at, last_block_at, token_logps


def supported(model: nn.Module) -> bool:
    """Whether the model's attention layers can take the KL pass's prefix cache: those that core.layerwise
    can also run one at a time (llama/mistral/qwen, no sliding window)."""
    return layerwise.stepwise_forward_ok(model)


def shares_prompt(ids: np.ndarray, start: int, kl_ids: np.ndarray, kl_start: int) -> bool:
    """Whether a KL pair starts with its example's exact prompt and has a completion token after it."""
    return start == kl_start and 1 <= start < len(kl_ids) and np.array_equal(ids[:start], kl_ids[:start])


def pack(kl_ids: list[np.ndarray], starts: np.ndarray, k_to: int = 8) -> tuple[np.ndarray, ...]:
    """The KL pass's arrays for a batch whose pairs share their prompts (see module doc).

    Returns (tokens [B, W], offsets [B], attention mask [B, 1, W, P+W] bool, targets [B, W+1],
    loss mask [B, W+1]) where P is the longest prompt and W+1 the longest KL completion rounded up to
    `k_to`. tokens are each completion but its last token, at positions offsets[b] = |prompt| onwards;
    targets are the whole completion (the first predicted from the policy's last prompt position).
    """
    starts = np.asarray(starts, dtype=np.int64)
    comps = [seq[int(st):] for seq, st in zip(kl_ids, starts)]
    k = k_to * -(-max(len(c) for c in comps) // k_to)
    w, p = k - 1, int(starts.max())
    b = len(comps)
    tokens = np.zeros((b, max(w, 1)), np.int32)
    targets = np.zeros((b, k), np.int32)
    loss_mask = np.zeros((b, k), np.float32)
    for i, c in enumerate(comps):
        tokens[i, : len(c) - 1] = c[:-1]
        targets[i, : len(c)] = c
        loss_mask[i, : len(c)] = 1.0
    return tokens, starts.astype(np.int32), prefix_mask(starts, p, tokens.shape[1]), targets, loss_mask


def prefix_mask(starts: np.ndarray, p: int, w: int) -> np.ndarray:
    """The KL completions' attention mask [B, 1, W, P+W]: each row's own prompt (the first starts[b] of P prefix
    keys), then causal within its W completion positions."""
    b = len(starts)
    prefix = np.arange(p)[None, None, :] < np.asarray(starts)[:, None, None]  # [B, 1, P]: the example's own prompt
    own = np.tril(np.ones((w, w), bool))  # causal within the completion
    return np.concatenate([np.broadcast_to(prefix, (b, w, p)), np.broadcast_to(own, (b, w, w))], axis=-1)[:, None]


class _Prefix:
    """Cache stand-in for the KL pass: the example's recorded prompt keys/values, then the pass's own."""

    def __init__(self, recorded: Recorder, offsets: mx.array, mask: mx.array) -> None:
        width = mask.shape[-1] - mask.shape[-2]
        self.keys = mx.stop_gradient(recorded.keys[:, :, :width])
        self.values = mx.stop_gradient(recorded.values[:, :, :width])
        self.offset, self.mask = offsets, mask

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate([self.values, values], axis=2)

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> mx.array:
        return self.mask


def recorders(model: nn.Module) -> list[Any]:
    """One cache stand-in per layer, to pass as `cache=` to the policy forward: they keep its keys/values."""
    return [Recorder() for _ in model.model.layers]


def kl_logps(model: nn.Module, recorded: list[Any], first_hidden: mx.array, kl: tuple[mx.array, ...]) -> mx.array:
    """Summed log-probs of the KL pairs' completions (no gradient), from the policy forward's recorded
    keys/values and its final hidden state at each prompt's last position (`first_hidden`, [B, 1, H])."""
    kl_tokens, offsets, attn = kl[:3]
    kl_hidden = model.model(kl_tokens, cache=[_Prefix(r, offsets, attn) for r in recorded])
    return _completion_logps(model, first_hidden, kl_hidden, kl)


def _completion_logps(model: nn.Module, first_hidden: mx.array, kl_hidden: mx.array, kl: tuple[mx.array, ...]) -> mx.array:
    """Summed log-probs of the KL completions from the prompt's last (normed) hidden state and the pass's own."""
    kl_targets, kl_mask = kl[3:]
    kl_hidden = mx.concatenate([mx.stop_gradient(first_hidden), kl_hidden], axis=1)[:, : kl_targets.shape[1]]
    return mx.stop_gradient((token_logps(head(model, kl_hidden), kl_targets) * kl_mask).sum(axis=-1))


def record_with_kl(model: nn.Module, tokens: mx.array, positions: mx.array,
                   kl: tuple[mx.array, ...]) -> tuple[layerwise.Tape, mx.array]:
    """The policy forward recorded for core.layerwise.backward, with the KL completions (no gradient) run
    through each layer in that layer's evaluation, reading its just-recorded prompt keys/values (dropped once
    read): (the tape, the KL completions' summed log-probs). `positions` are the batch's trained positions
    (batching.pack's): the first KL token is predicted from the prompt's last."""
    kl_tokens, offsets, attn = kl[:3]
    recorded = recorders(model)
    kl_attn = _fused_mask(offsets, attn)
    kl_hidden = [model.model.embed_tokens(kl_tokens)]

    def beside(i: int, layer: nn.Module) -> mx.array:
        with dequantize.dequantized(model, layer):
            kl_hidden[0] = layer(kl_hidden[0], kl_attn, cache=_Prefix(recorded[i], offsets, attn))
        recorded[i] = Recorder()  # its keys/values read: freed with the evaluation
        return kl_hidden[0]

    tape = layerwise.record(model, tokens, recorded, beside)
    first = mx.take_along_axis(tape.normed(model), positions[:, :1, None], axis=1)
    return tape, _completion_logps(model, first, model.model.norm(kl_hidden[0]), kl)


def _fused_mask(offsets: mx.array, attn: mx.array) -> mx.array | str:
    """The KL completions' attention mask, or "causal" where every prompt has the prefix's whole width: MLX's
    "causal" (aligned to the last key) is then that mask, and fused."""
    return "causal" if (np.array(offsets) == attn.shape[-1] - attn.shape[-2]).all() else attn


def policy_and_kl_logps(model: nn.Module, seq: tuple[mx.array, ...], kl: tuple[mx.array, ...]) -> tuple[mx.array, mx.array]:
    """Summed completion log-probs of the batch (differentiable) and of its KL pairs (no gradient).

    seq is batching.pack's (tokens, positions, targets, mask); kl is `pack`'s five arrays.
    """
    tokens, positions, targets, mask = seq
    recorded = recorders(model)
    hidden = hidden_at(model, tokens[:, :-1], positions, recorded)
    logps = (token_logps(head(model, hidden), targets) * mask).sum(axis=-1)
    return logps, kl_logps(model, recorded, hidden[:, :1], kl)


def reference_logps(model: nn.Module, seq: tuple[mx.array, ...], kl: tuple[mx.array, ...]) -> tuple[mx.array, mx.array]:
    """`policy_and_kl_logps` without gradient, one layer per evaluation for both passes together (the KTO
    reference pass under train.grad_checkpoint): layer i of the examples records its keys/values, layer i of
    the KL pairs reads them, and they are dropped before layer i + 1. Evaluated."""
    tokens, positions, targets, mask = seq
    kl_tokens, offsets, attn, kl_targets, kl_mask = kl
    inner = model.model
    hidden, kl_hidden = inner.embed_tokens(tokens[:, :-1]), inner.embed_tokens(kl_tokens)
    kl_attn = _fused_mask(offsets, attn)
    llama = getattr(model, "model_type", None) in LLAMA_BLOCK
    for i, layer in enumerate(inner.layers):
        recorded = Recorder()
        if llama and i == len(inner.layers) - 1:  # as losses.hidden_at: the last block at the positions only
            with dequantize.dequantized(model, layer):
                hidden = last_block_at(model, hidden, positions, recorded)
        else:
            hidden = layerwise.causal(model, layer, hidden, recorded)
        with dequantize.dequantized(model, layer):
            kl_hidden = layer(kl_hidden, kl_attn, cache=_Prefix(recorded, offsets, attn))
            mx.eval(hidden, kl_hidden)
    if not llama:
        hidden = mx.take_along_axis(inner.norm(hidden), positions[..., None], axis=1)
    kl_hidden = mx.concatenate([hidden[:, :1], inner.norm(kl_hidden)], axis=1)[:, : kl_targets.shape[1]]
    return (layerwise.head_logps(model, hidden, targets, mask), layerwise.head_logps(model, kl_hidden, kl_targets, kl_mask))
