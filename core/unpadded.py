"""The reference pass's forward without padding in its dense parts: each layer's projections and MLP run on the
batch's real tokens alone, laid end to end; only attention sees the padded rows.

A batch of examples and their KL pairs (core.prefix_kl: each KL completion after its example's prompt) padded
to its longest example and its longest KL completion wastes the padding's share of every matmul: on the bundled
data, 20% of the examples' padded tokens and 59% of the KL completions' (bench/reference_pass.py). Here the
examples' input tokens and the KL completions' are one flat list [N]; per layer the queries, keys and values
are projected for all of them at once (one product for both, not two), rotated at each token's own position,
scattered into the padded rows for attention (the examples causal, in query blocks on CPUs as
core.block_attention; the KL completions, in groups of similar width, on their example's
prompt keys/values, as core.prefix_kl), gathered back, and the output projection and the MLP run on the flat
list again. The last layer runs its output projection and MLP only where a log-prob is read (the completion
positions), as core.losses.hidden_at. The result equals the padded pass up to floating-point rounding (tested).

mlx-lm's llama/mistral blocks only (core.losses.LLAMA_BLOCK); the caller falls back to the padded pass otherwise.
Evaluated one layer at a time (core.layerwise's bound on what is alive); no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import dequantize, layerwise
from .block_attention import attention, causal
from .losses import LLAMA_BLOCK, head, token_logps
from .prefix_kl import prefix_mask


def supported(model: nn.Module) -> bool:
    return getattr(model, "model_type", None) in LLAMA_BLOCK and layerwise.stepwise_forward_ok(model)


@dataclass
class Layout:
    """Where each token of the flat list sits, and what is read at the end (all numpy; `build` makes it)."""

    tokens: np.ndarray  # [N] the examples' input tokens, then the KL completions' (all but their last token)
    positions: np.ndarray  # [N] each token's RoPE position
    rows: np.ndarray  # [B, L] flat index of each padded example position (N: padding)
    groups: list[KLGroup]  # the KL completions' padded rows, in groups of similar width (none: no KL pairs)
    from_rows: np.ndarray  # [N] index of each flat token into the padded rows: the examples' [B*L], then each group's
    read: np.ndarray  # [R] flat indices whose final hidden state predicts a target
    targets: np.ndarray  # [R] those targets
    owner: np.ndarray  # [R] which sum each belongs to: b for example b's, B + b for KL pair b's

    @property
    def n_examples(self) -> int:
        return self.rows.shape[0]


@dataclass
class KLGroup:
    """KL completions attended to together: their examples, padded rows and prompt lengths."""

    examples: np.ndarray  # [G] batch rows of their examples
    rows: np.ndarray  # [G, W] flat index of each padded position (N: padding)
    prompts: np.ndarray  # [G] each one's prompt length: the keys it reads from its example


GROUP_COST = 4096  # a group's fixed cost in attention scores per head (its few extra operations), for `_groups`


def _groups(widths: np.ndarray, prompts: np.ndarray, pad_to: int) -> list[np.ndarray]:
    """The KL rows split into groups of similar completion width: contiguous runs of the rows sorted by width
    that minimise the attention scores computed (rows × padded width × (longest prompt + padded width)) plus
    GROUP_COST a group (exact, by dynamic programming over the sorted rows)."""
    order = np.argsort(widths, kind="stable")
    b = len(order)
    best, cut = np.full(b + 1, np.inf), np.zeros(b + 1, np.int64)
    best[0] = 0.0
    for end in range(1, b + 1):
        for start in range(end):
            rows = order[start:end]
            w = pad_to * -(-int(widths[rows].max()) // pad_to)
            cost = best[start] + len(rows) * w * (int(prompts[rows].max()) + w) + GROUP_COST
            if cost < best[end]:
                best[end], cut[end] = cost, start
    spans, end = [], b
    while end:
        spans.append(order[cut[end] : end])
        end = cut[end]
    return spans[::-1]


def build(ids: list[np.ndarray], starts: np.ndarray, kl_ids: list[np.ndarray] | None = None,
          pad_to: int = 16) -> Layout:
    """The layout of examples `ids` (completions from `starts`) and, if given, their KL pairs `kl_ids`, each of
    which starts with its example's exact prompt (core.prefix_kl.shares_prompt)."""
    b = len(ids)
    starts = np.asarray(starts, np.int64)
    inputs = [np.asarray(s[:-1]) for s in ids]
    comps = [np.asarray(k[int(st):]) for k, st in zip(kl_ids, starts)] if kl_ids is not None else []
    kl_inputs = [c[:-1] for c in comps]
    lengths = np.array([len(s) for s in inputs])
    kl_lengths = np.array([len(c) for c in kl_inputs], np.int64)
    width = pad_to * -(-int(lengths.max()) // pad_to)
    firsts = np.concatenate([[0], np.cumsum(lengths)])
    n_ex = int(firsts[-1])
    kl_firsts = n_ex + np.concatenate([[0], np.cumsum(kl_lengths)])
    n = int(kl_firsts[-1])
    rows = np.full((b, width), n, np.int64)
    from_rows = np.zeros(n, np.int64)
    positions = np.zeros(n, np.int64)
    read, targets, owner = [], [], []
    for i in range(b):
        span = np.arange(firsts[i], firsts[i + 1])
        rows[i, : lengths[i]] = span
        from_rows[span] = i * width + np.arange(lengths[i])
        positions[span] = np.arange(lengths[i])
        first = max(int(starts[i]), 1)
        read.append(span[first - 1 :])
        targets.append(ids[i][first:])
        owner.append(np.full(len(ids[i]) - first, i))
    groups, base = [], b * width
    for members in _groups(kl_lengths, starts, pad_to) if comps else []:
        kl_width = max(1, pad_to * -(-int(kl_lengths[members].max()) // pad_to))
        group_rows = np.full((len(members), kl_width), n, np.int64)
        for g, i in enumerate(members):
            kspan = np.arange(kl_firsts[i], kl_firsts[i + 1])
            group_rows[g, : kl_lengths[i]] = kspan
            from_rows[kspan] = base + g * kl_width + np.arange(kl_lengths[i])
            positions[kspan] = starts[i] + np.arange(kl_lengths[i])
        groups.append(KLGroup(members, group_rows, starts[members]))
        base += group_rows.size
    for i in range(len(comps)):
        # the first completion token is predicted from the example's last prompt position
        read.append(np.concatenate([[firsts[i] + max(int(starts[i]), 1) - 1], np.arange(kl_firsts[i], kl_firsts[i + 1])]))
        targets.append(comps[i])
        owner.append(np.full(len(comps[i]), b + i))
    tokens = np.concatenate(inputs + kl_inputs).astype(np.int32)
    return Layout(tokens, positions, rows, groups, from_rows, np.concatenate(read),
                  np.concatenate(targets).astype(np.int32), np.concatenate(owner))


def _heads(x: mx.array, rows: mx.array, n_heads: int) -> mx.array:
    """Flat [N, n_heads * d] (plus a zero row for padding, appended by the caller) into padded [B, h, L, d]."""
    b, width = rows.shape
    return x[rows.reshape(-1)].reshape(b, width, n_heads, -1).transpose(0, 2, 1, 3)


def _flat(out: mx.array) -> mx.array:
    """Attention output [B, h, L, d] as padded-row-major [B * L, h * d]."""
    return out.transpose(0, 2, 1, 3).reshape(-1, out.shape[1] * out.shape[3])


def _layer(layer: nn.Module, h: mx.array, arrays: dict[str, Any], keep: mx.array | None) -> mx.array:
    """One llama block on the flat hidden states h [N, H]; `keep`: flat indices the output is wanted at."""
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    n = x.shape[0]

    def rotated(y: mx.array, heads: int) -> mx.array:
        y = attn.rope(y.reshape(n, 1, heads, -1).transpose(0, 2, 1, 3), offset=arrays["positions"])
        return padded(y.reshape(n, -1))

    def padded(y: mx.array) -> mx.array:  # a zero row at index N, which padding points to
        return mx.concatenate([y, mx.zeros((1, y.shape[1]), y.dtype)])

    q, k = rotated(attn.q_proj(x), attn.n_heads), rotated(attn.k_proj(x), attn.n_kv_heads)
    v = padded(attn.v_proj(x))
    rows = arrays["rows"]
    ex_k, ex_v = _heads(k, rows, attn.n_kv_heads), _heads(v, rows, attn.n_kv_heads)
    outs = [_flat(causal(_heads(q, rows, attn.n_heads), ex_k, ex_v, attn.scale, arrays["chunk"]))]
    for members, group_rows, prefix, mask in arrays["groups"]:
        keys = mx.concatenate([ex_k[members, :, :prefix], _heads(k, group_rows, attn.n_kv_heads)], axis=2)
        values = mx.concatenate([ex_v[members, :, :prefix], _heads(v, group_rows, attn.n_kv_heads)], axis=2)
        outs.append(_flat(attention(_heads(q, group_rows, attn.n_heads), keys, values, attn.scale, mask)))
    o = mx.concatenate(outs)[arrays["from_rows"]]
    if keep is not None:
        h, o = h[keep], o[keep]
    h = h + attn.o_proj(o)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _group_arrays(group: KLGroup) -> tuple[mx.array, mx.array, int, Any]:
    """A KL group's device arrays and attention mask: each completion sees its own example's prompt and itself
    causally ("causal" when every prompt is the group's longest, MLX's fused mask)."""
    prefix = int(group.prompts.max())
    mask: Any = "causal"
    if not (group.prompts == prefix).all():
        mask = mx.array(prefix_mask(group.prompts, prefix, group.rows.shape[1]))
    return mx.array(group.examples.astype(np.int32)), mx.array(group.rows.astype(np.int32)), prefix, mask


def _arrays(lay: Layout, chunk: int) -> dict[str, Any]:
    return {"positions": mx.array(lay.positions.astype(np.int32)), "rows": mx.array(lay.rows.astype(np.int32)),
            "from_rows": mx.array(lay.from_rows.astype(np.int32)), "groups": [_group_arrays(g) for g in lay.groups],
            "chunk": chunk}


def logps(model: nn.Module, lay: Layout, chunk: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probs of each example's completion [B] and of each KL pair's completion [B] (empty without KL
    pairs), one layer per evaluation; `chunk`: the examples' causal attention `chunk` queries at a time."""
    inner = model.model
    arrays = _arrays(lay, chunk)
    h = inner.embed_tokens(mx.array(lay.tokens))
    read = mx.array(lay.read.astype(np.int32))
    for i, layer in enumerate(inner.layers):
        with dequantize.dequantized(model, layer):
            h = _layer(layer, h, arrays, read if i == len(inner.layers) - 1 else None)
            mx.eval(h)
    h = inner.norm(h)
    targets = mx.array(lay.targets)
    rows = max(1, layerwise.HEAD_ELEMENTS // int(model.args.vocab_size))
    per_token = []
    for r in range(0, len(lay.targets), rows):
        part = token_logps(head(model, h[r : r + rows]), targets[r : r + rows])
        mx.eval(part)
        per_token.append(np.array(part.astype(mx.float32)))
    b = lay.n_examples
    sums = np.bincount(lay.owner, np.concatenate(per_token).astype(np.float64), minlength=2 * b).astype(np.float32)
    return sums[:b], sums[b:] if lay.groups else np.zeros(0, np.float32)
