"""Loss math against independent NumPy computations (TRL's KTO formulas, hand-computed cross-entropy)."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from tests.oracles import sequence_logps
from tunedeck.core import losses as L


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def trl_kto(pc, pr, pkl, rc, rr, rkl, beta, wd, wu, loss_type):
    """TRL KTOTrainer.kto_loss, transcribed in NumPy (float64)."""
    if loss_type == "kto":
        kl = max(float(np.mean(pkl - rkl)), 0.0)
    else:
        kl = 0.0
    cl = pc - rc
    rl = pr - rr
    if loss_type == "kto":
        chosen = 1 - np_sigmoid(beta * (cl - kl))
        rejected = 1 - np_sigmoid(beta * (kl - rl))
    else:
        chosen = 1 - np_sigmoid(beta * cl)
        rejected = np_sigmoid(beta * rl)
    losses = np.concatenate([wd * chosen, wu * rejected])
    return losses, beta * cl, beta * rl, kl


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_matches_trl(seed: int, loss_type: str) -> None:
    rng = np.random.default_rng(seed)
    nc, nr, nk = rng.integers(1, 6), rng.integers(1, 6), 7
    pc, pr, rc, rr = (rng.normal(-40, 8, n) for n in (nc, nr, nc, nr))
    pkl, rkl = rng.normal(-60, 5, nk), rng.normal(-60, 5, nk)
    if seed % 2:  # make the KL estimate negative so the clamp at 0 is exercised
        pkl = rkl - np.abs(rng.normal(3, 1, nk))
    beta, wd, wu = rng.uniform(0.05, 0.5), rng.uniform(0.5, 2), rng.uniform(0.5, 3)
    want = trl_kto(pc, pr, pkl, rc, rr, rkl, beta, wd, wu, loss_type)
    got = L.kto_loss(*(mx.array(a.astype(np.float32)) for a in (pc, pr, pkl, rc, rr, rkl)), beta, wd, wu, loss_type)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g), w, rtol=1e-4, atol=1e-5)
    if seed % 2 and loss_type == "kto":
        assert float(got[3]) == 0.0


def test_kto_kl_has_no_gradient() -> None:
    rkl = mx.array([-50.0, -52.0])
    def f(pkl):
        losses, *_ = L.kto_loss(mx.array([-10.0]), mx.array([-12.0]), pkl, mx.array([-11.0]), mx.array([-11.0]), rkl, 0.1)
        return losses.mean()
    g = mx.grad(f)(mx.array([-40.0, -41.0]))
    assert np.all(np.array(g) == 0)


def test_masked_form_equals_split_form() -> None:
    rng = np.random.default_rng(0)
    p, r = rng.normal(-30, 5, 8).astype(np.float32), rng.normal(-30, 5, 8).astype(np.float32)
    desirable = np.array([1, 0, 1, 1, 0, 1, 0, 1], bool)
    losses, rewards = L.kto_losses_masked(mx.array(p), mx.array(r), mx.array(desirable), mx.array(0.7), 0.2, 1.0, 2.5)
    ref = trl_kto(p[desirable], p[~desirable], np.array([0.7]), r[desirable], r[~desirable], np.array([0.0]),
                  0.2, 1.0, 2.5, "kto")
    np.testing.assert_allclose(np.sort(np.array(losses)), np.sort(ref[0]), rtol=1e-5)
    np.testing.assert_allclose(np.array(rewards)[desirable], ref[1], rtol=1e-5)


class TinyLM:
    """A fixed 'model': logits are a lookup of the previous token (so the loss is hand-computable)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = mx.array(table)

    def __call__(self, inputs: mx.array) -> mx.array:
        return self.table[inputs]


def test_sft_loss_by_hand() -> None:
    rng = np.random.default_rng(1)
    V = 5
    table = rng.normal(0, 1, (V, V)).astype(np.float32)
    tokens = np.array([[1, 2, 3, 4, 0], [2, 2, 1, 0, 0]], np.int32)
    mask = np.array([[0, 0, 1, 1], [0, 1, 0, 0]], np.float32)  # row 0: 3→4, 4→0; row 1: 2→1
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    want = -(logp[3, 4] + logp[4, 0] + logp[2, 1]) / 3
    loss, n = L.sft_loss(TinyLM(table), mx.array(tokens), mx.array(mask))
    assert int(n) == 3 and math.isclose(float(loss), want, rel_tol=1e-5)
    seq = sequence_logps(TinyLM(table), mx.array(tokens), mx.array(mask))
    np.testing.assert_allclose(np.array(seq), [logp[3, 4] + logp[4, 0], logp[2, 1]], rtol=1e-5)
    # masked tokens contribute nothing: change them and the loss does not move
    tokens2 = tokens.copy()
    tokens2[0, 1] = 4
    tokens2[1, 4] = 3
    loss2, _ = L.sft_loss(TinyLM(table), mx.array(tokens2), mx.array(mask))
    assert float(loss2) == float(loss)


def test_packed_logps_equal_full_logits(demo_model) -> None:
    import mlx_lm

    from tunedeck.core.batching import pack, pad

    model, _ = mlx_lm.load(str(demo_model))
    model.set_dtype(mx.float32)
    rng = np.random.default_rng(2)
    ids = [rng.integers(5, 1000, n).astype(np.int32) for n in (20, 33, 9)]
    starts = np.array([12, 30, 1])
    tokens, mask = pad(ids, starts)
    full = sequence_logps(model, mx.array(tokens), mx.array(mask))
    packed = L.packed_logps(model, *map(mx.array, pack(ids, starts)))
    np.testing.assert_allclose(np.array(packed), np.array(full), rtol=1e-4)
    loss_full, n_full = L.sft_loss(model, mx.array(tokens), mx.array(mask))
    loss_packed, n_packed = L.packed_sft_loss(model, *map(mx.array, pack(ids, starts)))
    assert int(n_full) == int(n_packed) == 8 + 3 + 8
    assert math.isclose(float(loss_full), float(loss_packed), rel_tol=1e-5)
