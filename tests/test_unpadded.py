"""core.unpadded's layout: every token once, KL rows grouped by width, attention by query blocks exact."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from tunedeck.core import data, demo, unpadded
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
    blocks = unpadded._causal(q, k, v, 0.25, 64)
    np.testing.assert_allclose(np.array(blocks), np.array(whole), rtol=1e-5, atol=1e-6)
