"""core.unpadded's layout (every token once, KL rows grouped by width) and core.block_attention's query blocks."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tunedeck.core import block_attention, data, demo, unpadded
from tunedeck.core.batching import tokenize


def test_layout_places_every_token_once_and_groups_kl_rows(demo_model: Path) -> None:
    import mlx_lm

    seqs = tokenize(mlx_lm.load(str(demo_model))[1], data.load(demo.sample_dataset()).examples[:16], 512, kto=True,
                    seed=0)
    idx = np.arange(16)
    lay = unpadded.build([seqs.ids[i] for i in idx], seqs.starts[idx], [seqs.kl_ids[i] for i in idx])
    n = len(lay.tokens)
    assert n == sum(len(s) - 1 for s in seqs.ids) + sum(len(k) - st - 1 for k, st in zip(seqs.kl_ids, seqs.starts))
    slots = np.concatenate([lay.rows.ravel()] + [g.rows.ravel() for g in lay.groups])
    real = slots[slots < n]
    assert sorted(real) == list(range(n))  # each flat token in exactly one padded slot
    assert np.array_equal(slots[lay.from_rows], np.arange(n))  # and gathered back from it
    members = np.concatenate([g.examples for g in lay.groups])
    assert sorted(members) == list(range(16)) and len(lay.groups) > 1  # KL completions of very different widths
    assert len(lay.targets) == sum(len(s) - st for s, st in zip(seqs.ids, seqs.starts)) + sum(
        len(k) - st for k, st in zip(seqs.kl_ids, seqs.starts))


def test_causal_attention_by_query_blocks_equals_whole() -> None:
    """Blocks of queries against the keys up to each block's end give MLX's whole causal attention: each score
    and each softmax row is computed over the same keys, only split by rows (float32: within a few ulps)."""
    q, k, v = (mx.random.normal((2, 4, 150, 16), key=mx.random.key(i)) for i in range(3))
    whole = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    blocks = block_attention.causal(q, k, v, 0.25, 64)
    np.testing.assert_allclose(np.array(blocks), np.array(whole), rtol=1e-5, atol=1e-6)


def test_block_attention_modules_give_mlx_lm_attention_and_gradients(demo_model: Path) -> None:
    """A model's attention switched to query blocks (core.block_attention.use) gives the loss and LoRA gradients
    of mlx-lm's own attention: the same scores and softmax rows, split by rows (float32, per-element rtol)."""
    import mlx.nn as nn
    import mlx_lm
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from tunedeck.core.batching import pack
    from tunedeck.core.losses import packed_sft_loss

    model, _ = mlx_lm.load(str(demo_model))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                                      "keys": ["self_attn.q_proj", "self_attn.v_proj"]})
    model.update(tree_map(lambda p: 0.05 * mx.random.normal(p.shape, key=mx.random.key(4)), model.trainable_parameters()))
    rng = np.random.default_rng(2)
    seq = tuple(map(mx.array, pack([rng.integers(10, 2000, k).astype(np.int32) for k in (200, 150, 177)],
                                   np.array([20, 50, 30]))))
    out = []
    for on in (False, True):
        block_attention.use(model, on)
        assert type(model.model.layers[0].self_attn).__name__ == ("BlockCausalAttention" if on else "Attention")
        (loss, _), grads = nn.value_and_grad(model, lambda m: packed_sft_loss(m, *seq))(model)
        out.append((loss.item(), dict(tree_flatten(grads))))
    block_attention.use(model, False)
    (want, want_g), (got, got_g) = out
    assert got == pytest.approx(want, rel=1e-5)
    for k, g in want_g.items():
        np.testing.assert_allclose(np.array(got_g[k]), np.array(g), rtol=1e-3, atol=1e-6 * float(mx.abs(g).max()), err_msg=k)
