"""core.fast_exp (softmax, logsumexp and SwiGLU through power(2, x·log2e)) and core.block_attention's CPU attention, against
float64 references computed outside MLX: numpy for the softmax, torch autograd for SwiGLU and attention.

Bounds come from the arithmetic: exp(x) as 2^(x·log2e) rounds its exponent three times (x itself as a difference,
the product with log2e, power's own base-e reduction), each by 2^-24 relative, so the value is off by up to
3·|x|·2^-24 = 1.5·|x|·F32_EPS relative (F32_EPS = 2^-23), plus a few float32 roundings of the sum and the
normalisation; MLX's own exp has the same bound (module doc).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import F32_EPS


def _torch() -> object:
    return pytest.importorskip("torch", reason="the oracle needs torch (pip install -e '.[oracle]')")


def test_softmax_and_its_gradient_match_float64() -> None:
    import mlx.core as mx

    from tunedeck.core import fast_exp

    rng = np.random.default_rng(0)
    s = (rng.normal(size=(6, 37, 300)) * 8).astype(np.float32)
    s[:, :, 250:] = -np.inf  # masked entries get exactly 0
    w = rng.normal(size=s.shape).astype(np.float32)
    x = s.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    got = np.array(fast_exp.softmax(mx.array(s)))
    assert (got[:, :, 250:] == 0).all()
    shifted = np.abs(np.where(np.isinf(x), 0, x - x.max(-1, keepdims=True)))
    # each value's exponent roundings (module doc), the normaliser's (the same, weighted by p, over the row) and
    # the rounding of a sum of 250 terms (~sqrt(250) = 16 ulps) and of the division
    z_err = 1.5 * F32_EPS * (p * shifted).sum(-1, keepdims=True)
    bound = p * (1.5 * shifted * F32_EPS + z_err + 18 * F32_EPS) + 1e-38
    assert np.all(np.abs(got - p) <= bound), float(np.max(np.abs(got - p) / bound))
    grad = np.array(mx.grad(lambda a: (fast_exp.softmax(a) * mx.array(w)).sum())(mx.array(s)))
    ref = p * (w - (w * p).sum(-1, keepdims=True))
    # p's error as above, times |w - <w>|, plus the dot product's rounding over 300 terms (~sqrt(300) ulps)
    scale = p * (np.abs(w) + np.abs(w * p).sum(-1, keepdims=True))
    g_bound = scale * (1.5 * shifted * F32_EPS + z_err + 40 * F32_EPS) + 1e-30
    assert np.all(np.abs(grad - ref) <= g_bound), float(np.max(np.abs(grad - ref) / g_bound))


def test_logsumexp_and_its_gradient_match_float64() -> None:
    import mlx.core as mx

    from tunedeck.core import fast_exp

    rng = np.random.default_rng(4)
    x = (rng.normal(size=(5, 11, 2000)) * 4).astype(np.float32)
    c = rng.normal(size=(5, 11)).astype(np.float32)
    d = x.astype(np.float64)
    m = d.max(-1, keepdims=True)
    lse = np.log(np.exp(d - m).sum(-1)) + m[..., 0]
    p = np.exp(d - lse[..., None])
    got = np.array(fast_exp.logsumexp(mx.array(x)))
    # the sum's relative error (each term's exponent roundings weighted by p, ~sqrt(2000) = 45 ulps of summing)
    # is log's absolute error; the result rounds once more at |lse|
    sum_err = 1.5 * F32_EPS * (p * (m - d)).sum(-1) + 46 * F32_EPS
    assert np.all(np.abs(got - lse) <= sum_err + F32_EPS * np.abs(lse))
    grad = np.array(mx.grad(lambda a: (fast_exp.logsumexp(a) * mx.array(c)).sum())(mx.array(x)))
    # exp(x - lse): the exponent's roundings at |x - lse| and lse's own error, times |c|
    bound = p * np.abs(c)[..., None] * (1.5 * F32_EPS * np.abs(d - lse[..., None]) + (sum_err + 4 * F32_EPS *
                                                                                     np.abs(lse))[..., None])
    assert np.all(np.abs(grad - p * c[..., None]) <= bound + 1e-37)


def test_swiglu_and_its_gradient_match_torch_float64() -> None:
    import mlx.core as mx

    from tunedeck.core import fast_exp

    torch = _torch()
    rng = np.random.default_rng(1)
    g, u, w = (rng.normal(scale=sc, size=(3, 17, 40)).astype(np.float32) for sc in (4.0, 1.0, 1.0))
    tg, tu = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (g, u))
    out = torch.nn.functional.silu(tg) * tu
    (out * torch.tensor(w, dtype=torch.float64)).sum().backward()
    got = np.array(fast_exp.swiglu(mx.array(g), mx.array(u)))
    dg, du = (np.array(a) for a in mx.grad(lambda a, b: (fast_exp.swiglu(a, b) * mx.array(w)).sum(),
                                           argnums=(0, 1))(mx.array(g), mx.array(u)))
    # exp(-g) within 1.5·|g|·F32_EPS relative (module doc), and so the sigmoid; 1/(1 + e) and each of ~6
    # products round once more: relative to the sigmoid's own size (s = sigmoid(g), float64)
    rel = (1.5 * np.abs(g) + 8) * F32_EPS
    sig = 1 / (1 + np.exp(-g.astype(np.float64)))
    assert np.all(np.abs(got - out.detach().numpy()) <= rel * np.abs(g * sig * u) + 1e-37)
    assert np.all(np.abs(du - tu.grad.numpy()) <= rel * np.abs(w * g * sig) + 1e-37)
    # the gate's, s(1 + g(1 - s)): with the cancellation in 1 + g(1 - s), relative to |w·u|·s·(1 + |g|)
    assert np.all(np.abs(dg - tg.grad.numpy()) <= rel * np.abs(w * u) * sig * (1 + np.abs(g)) + 1e-37)


def _torch_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, w: np.ndarray, scale: float,
                     allowed: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """torch float64: attention of q over k, v (kv heads repeated), a boolean mask, its output and the gradients
    of (output * w).sum()."""
    torch = _torch()
    tq, tk, tv = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    s = (tq * scale) @ torch.repeat_interleave(tk, rep, dim=1).transpose(-1, -2)
    if allowed is not None:
        s = s.masked_fill(~torch.tensor(allowed), float("-inf"))
    out = torch.softmax(s, dim=-1) @ torch.repeat_interleave(tv, rep, dim=1)
    (out * torch.tensor(w, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


@pytest.mark.parametrize("mask", ["none", "causal", "causal-offset", "blocks", "per-head", "additive"])
def test_cpu_attention_and_its_gradients_match_torch_float64(mask: str) -> None:
    """core.block_attention.attention on the CPU (grouped queries, each mask form MLX's kernel takes) and its
    causal query blocks, against torch float64 on the same float32 inputs."""
    import mlx.core as mx

    from tunedeck.core import block_attention

    rng = np.random.default_rng(2)
    lq, lk = (40, 90) if mask == "causal-offset" else (90, 90)
    q = rng.normal(size=(2, 6, lq, 16)).astype(np.float32)
    k, v = (rng.normal(size=(2, 2, lk, 16)).astype(np.float32) for _ in range(2))
    w = rng.normal(size=q.shape).astype(np.float32)
    causal = np.arange(lk)[None] <= np.arange(lq)[:, None] + (lk - lq)
    allowed, arg = {
        "none": (None, None),
        "causal": (causal, "causal"),
        "causal-offset": (causal, "causal"),
        "blocks": (b := (rng.random((2, 1, lq, lk)) < 0.6) | (np.arange(lk) == 0), mx.array(b)),
        "per-head": (h := (rng.random((2, 6, lq, lk)) < 0.6) | (np.arange(lk) == 0), mx.array(h)),
        "additive": (causal, mx.array(np.where(causal, 0.0, -np.inf).astype(np.float32))),
    }[mask]
    ref = _torch_attention(q, k, v, w, 0.25, allowed)
    mq, mk, mv, mw = (mx.array(a) for a in (q, k, v, w))
    fns = [lambda a, b, c: block_attention.attention(a, b, c, 0.25, arg)]
    if mask.startswith("causal"):
        fns.append(lambda a, b, c: block_attention.causal(a, b, c, 0.25, 16))
    for fn in fns:
        out = np.array(fn(mq, mk, mv))
        grads = mx.grad(lambda a, b, c: (fn(a, b, c) * mw).sum(), argnums=(0, 1, 2))(mq, mk, mv)
        # scores of |s| <~ 20 (the exponent's rounding ~20·2^-24 relative on each probability) and sums of up
        # to 90 keys (and 3 query heads a kv head for dk, dv): within 2^-14 of each output's and gradient's scale
        for got, want in zip([out, *map(np.array, grads)], ref):
            np.testing.assert_allclose(got, want, rtol=0, atol=2.0**-14 * np.abs(want).max())


def test_training_swaps_every_plain_mlp_on_this_cpu(demo_model: Path) -> None:
    """load_for_training gives each MLP core.fast_exp's SwiGLU here, and `use(model, False)` gives mlx-lm's back:
    the same loss and LoRA gradients either way (float32, relative 1e-5: the exponent's rounding, above)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from tunedeck.core import config as C
    from tunedeck.core import fast_exp
    from tunedeck.core.batching import pack
    from tunedeck.core.losses import packed_sft_loss
    from tunedeck.core.model import load_for_training

    cfg = C.preset("demo")
    cfg.model.path, cfg.lora.dropout = str(demo_model), 0.0
    model = load_for_training(cfg.model, cfg.lora, "float32", 0).model
    assert all(type(layer.mlp).__name__.startswith("FastExp") for layer in model.layers)
    rng = np.random.default_rng(3)
    seq = tuple(map(mx.array, pack([rng.integers(10, 2000, n).astype(np.int32) for n in (120, 77)],
                                   np.array([60, 30]))))
    results = []
    for on in (True, False):
        assert fast_exp.use(model, on) == len(model.layers)
        loss, grad = nn.value_and_grad(model, lambda m: packed_sft_loss(m, *seq)[0])(model)
        results.append((float(loss), dict(tree_flatten(grad))))
    assert all(type(layer.mlp).__name__ == "MLP" for layer in model.layers)
    (fast_loss, fast_grad), (plain_loss, plain_grad) = results
    assert abs(fast_loss - plain_loss) <= 1e-5 * abs(plain_loss)
    for name, g in plain_grad.items():
        np.testing.assert_allclose(np.array(fast_grad[name]), np.array(g), rtol=0, atol=1e-5 * float(mx.abs(g).max()))
