"""Losses: masked SFT cross-entropy and KTO with TRL's KTOTrainer semantics.

KTO (Ethayarajh et al. 2024; TRL `KTOTrainer`, loss_type "kto"): with sequence log-probs summed over
completion tokens and r = log π(y|x) − log π_ref(y|x),

    z = max(0, mean(log π(y'|x) − log π_ref(y'|x)))        over mismatched pairs (x, y'), no gradient
    desirable:   1 − σ(β (r − z))          undesirable:   1 − σ(β (z − r))
    loss = mean(λ_D · desirable…, λ_U · undesirable…),  rewards = β · r

"apo_zero_unpaired" drops the KL term: desirable 1 − σ(β r), undesirable σ(β r).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import block_attention, dequantize, fast_exp


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) per position, computed in float32: [B, L, V] × [B, L] → [B, L]."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - (fast_exp.logsumexp(logits) if fast_exp.here() else mx.logsumexp(logits, axis=-1))


# Architectures whose logits are exactly `lm_head(model.model(x))` (or the tied embedding), so the
# vocabulary projection can be applied to the completion positions alone.
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3"}


def head(model: nn.Module, hidden: mx.array) -> mx.array:
    """The vocabulary projection of final (normed) hidden states: lm_head or the tied embedding."""
    if getattr(model.args, "tie_word_embeddings", False):
        return model.model.embed_tokens.as_linear(hidden)
    with dequantize.dequantized(model, model.lm_head):  # a quantized head as the layers (core.dequantize)
        return model.lm_head(hidden)


# Architectures whose last block is mlx-lm's llama TransformerBlock, which `hidden_at` runs at the
# completion positions only.
LLAMA_BLOCK = {"llama", "mistral"}


def hidden_at(model: nn.Module, inputs: mx.array, positions: mx.array, caches: list | None = None) -> mx.array:
    """model.model(inputs) at `positions` only ([B, K], each row's trained positions in order, then padding
    that repeats the first): the final normed hidden states [B, K, H].

    Only these positions reach the loss, so the last block computes its keys and values at every position
    but its queries, attention output and MLP at these alone (for llama/mistral; other architectures
    run whole and are gathered). `caches` are per-layer cache stand-ins (core.prefix_kl's recorders).
    """
    from mlx_lm.models.base import create_attention_mask  # mlx_lm's package loads transformers: seconds

    inner = model.model
    idx = positions[..., None]
    if getattr(model, "model_type", None) not in LLAMA_BLOCK:
        return mx.take_along_axis(inner(inputs, cache=caches), idx, axis=1)
    hidden = inner.embed_tokens(inputs)
    mask = create_attention_mask(hidden, caches[0] if caches else None)
    for i, layer in enumerate(inner.layers[:-1]):
        hidden = layer(hidden, mask, cache=caches[i] if caches else None)
    return last_block_at(model, hidden, positions, caches[-1] if caches else None)


def last_block_at(model: nn.Module, hidden: mx.array, positions: mx.array, cache: Any = None) -> mx.array:
    """The last llama/mistral block of `hidden_at` on the last block's input `hidden` [B, L, H]: keys and values
    at every position (into `cache`, a core.prefix_kl recorder, if given), the rest at `positions`; normed."""
    inner, idx = model.model, positions[..., None]
    last = inner.layers[-1]
    attn, x = last.self_attn, last.input_layernorm(hidden)
    B, L, _ = x.shape
    K = positions.shape[1]
    q = attn.q_proj(mx.take_along_axis(x, idx, axis=1)).reshape(B * K, 1, attn.n_heads, -1).transpose(0, 2, 1, 3)
    k = attn.k_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = attn.v_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    # each query rotated at its own position: SFT's all_assistant trains several spans of a row, so the
    # trained positions need not be consecutive (equal to RoPE over the whole row, gathered: exact)
    q = attn.rope(q, offset=positions.reshape(-1)).reshape(B, K, attn.n_heads, -1).transpose(0, 2, 1, 3)
    k = attn.rope(k)
    if cache is not None:
        k, v = cache.update_and_fetch(k, v)
    allowed = (mx.arange(L)[None, None, :] <= positions[:, :, None])[:, None]  # causal, at each query's position
    out = block_attention.attention(q, k, v, attn.scale, allowed)
    h = mx.take_along_axis(hidden, idx, axis=1) + attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, K, -1))
    return inner.norm(h + last.mlp(last.post_attention_layernorm(h)))


def completion_logits(model: nn.Module, inputs: mx.array, positions: mx.array) -> mx.array:
    """Logits at `positions` only ([B, K] indices into the inputs): [B, K, V].

    The projection to the vocabulary (and its float32 softmax) is the largest activation of a
    step; computing it for the K completion positions instead of all L saves memory and time.
    """
    if getattr(model, "model_type", None) not in PLAIN_HEAD or not hasattr(model, "model"):
        return mx.take_along_axis(model(inputs), positions[..., None], axis=1)
    return head(model, hidden_at(model, inputs, positions))


def hidden_logps(model: nn.Module, hidden: mx.array, positions: mx.array, targets: mx.array,
                 mask: mx.array) -> mx.array:
    """Masked per-position log-probs [B, K] of the targets, from the final hidden states [B, L, H]."""
    return token_logps(head(model, mx.take_along_axis(hidden, positions[..., None], axis=1)), targets) * mask


def packed_logps(model: nn.Module, tokens: mx.array, positions: mx.array, targets: mx.array,
                 mask: mx.array) -> mx.array:
    """Summed completion log-probs per sequence from a packed batch (see batching.pack)."""
    return (token_logps(completion_logits(model, tokens[:, :-1], positions), targets) * mask).sum(axis=-1)


def packed_sft_loss(model: nn.Module, tokens: mx.array, positions: mx.array, targets: mx.array,
                    mask: mx.array) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over the completion tokens of a packed batch; returns (loss, number of tokens)."""
    ntoks = mask.sum()
    nll = -(token_logps(completion_logits(model, tokens[:, :-1], positions), targets) * mask).sum()
    return nll / mx.maximum(ntoks, 1), ntoks


def sft_loss(model: nn.Module, tokens: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """`packed_sft_loss` from the logits at every position of a padded batch (batching.pad), mask over the
    targets [B, L-1]: (loss, number of tokens). bench/memory_probe.py's point of comparison."""
    logits = model(tokens[:, :-1])
    ntoks = mask.sum()
    nll = -(token_logps(logits, tokens[:, 1:]) * mask).sum()
    return nll / mx.maximum(ntoks, 1), ntoks


def kto_kl(policy_kl_logps: mx.array, reference_kl_logps: mx.array) -> mx.array:
    """TRL's KL baseline z: the batch mean of the KL-pair log-ratios, clamped at 0, without gradient."""
    return mx.maximum(mx.stop_gradient(mx.mean(policy_kl_logps - reference_kl_logps)), 0.0)


def kto_losses_masked(
    policy_logps: mx.array,
    reference_logps: mx.array,
    desirable: mx.array,
    kl: mx.array,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    loss_type: str = "kto",
) -> tuple[mx.array, mx.array]:
    """Per-example weighted KTO losses and rewards for a mixed batch (`desirable` is a bool mask).

    Shape-static form of `kto_loss` (no boolean indexing), used inside the compiled training step.
    """
    logratios = policy_logps - reference_logps
    if loss_type == "kto":
        chosen = 1 - mx.sigmoid(beta * (logratios - kl))
        rejected = 1 - mx.sigmoid(beta * (kl - logratios))
    elif loss_type == "apo_zero_unpaired":
        chosen = 1 - mx.sigmoid(beta * logratios)
        rejected = mx.sigmoid(beta * logratios)
    else:
        raise ValueError(f"unknown KTO loss_type {loss_type!r}")
    losses = mx.where(desirable, desirable_weight * chosen, undesirable_weight * rejected)
    return losses, mx.stop_gradient(beta * logratios)


def kto_loss(
    policy_chosen_logps: mx.array,
    policy_rejected_logps: mx.array,
    policy_kl_logps: mx.array,
    reference_chosen_logps: mx.array,
    reference_rejected_logps: mx.array,
    reference_kl_logps: mx.array,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """TRL's `KTOTrainer.kto_loss`: returns (losses, chosen_rewards, rejected_rewards, kl).

    losses concatenates the weighted desirable losses then the undesirable ones; the training loss is
    their mean. kl is 0 for "apo_zero_unpaired".
    """
    if loss_type == "kto":
        kl = kto_kl(policy_kl_logps, reference_kl_logps)
    else:
        kl = mx.array(0.0)
    n_chosen = policy_chosen_logps.shape[0]
    policy = mx.concatenate([policy_chosen_logps, policy_rejected_logps])
    reference = mx.concatenate([reference_chosen_logps, reference_rejected_logps])
    desirable = mx.arange(policy.shape[0]) < n_chosen
    losses, rewards = kto_losses_masked(
        policy, reference, desirable, kl, beta, desirable_weight, undesirable_weight, loss_type
    )
    return losses, rewards[:n_chosen], rewards[n_chosen:], kl
