"""core.lean_backward: the SwiGLU backward that keeps only gate, up and the output, and LoRA's input uncast.

SwiGLU's gradients equal MLX's own of mlx-lm's swiglu and match torch's float64 autograd of `silu(gate) * up` on
the same rounded inputs within the roundings of the dtype's arithmetic (bounds in the test). The whole-model
gradient with it is checked against TRL in tests/oracle/test_trl_kto.py (its `lean` cases); here the training
step's memory with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import F32_EPS


def _torch_grads(g: np.ndarray, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    torch = pytest.importorskip("torch", reason="the oracle needs torch (pip install -e '.[oracle]')")
    tg, tu = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (g, u))
    (torch.nn.functional.silu(tg) * tu * torch.tensor(w, dtype=torch.float64)).sum().backward()
    return tg.grad.numpy(), tu.grad.numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_backward_matches_torch_autograd(dtype: str) -> None:
    import mlx.core as mx
    from mlx_lm.models.activations import swiglu as mlx_lm_swiglu

    from tunedeck.core.lean_backward import swiglu

    rng = np.random.default_rng(0)
    g, u, w = (rng.normal(scale=s, size=(3, 17, 40)).astype(np.float32) for s in (3.0, 1.0, 1.0))
    t = getattr(mx, dtype)
    mg, mu, mw = mx.array(g).astype(t), mx.array(u).astype(t), mx.array(w).astype(t)
    rg, ru, rw = (np.array(a.astype(mx.float32)) for a in (mg, mu, mw))  # the inputs as rounded to dtype

    def grads(fn: Any) -> list[np.ndarray]:
        out = mx.grad(lambda a, b: (fn(a, b) * mw).astype(mx.float32).sum(), argnums=(0, 1))(mg, mu)
        return [np.array(a.astype(mx.float32)) for a in out]

    ours, plain, theirs = grads(swiglu), grads(mlx_lm_swiglu), _torch_grads(rg, ru, rw)
    for a, b in zip(ours, plain):  # MLX's own VJP of the same compiled expression: the same kernels
        np.testing.assert_array_equal(a, b)
    # against float64: in float32 each gradient element is a product of ~6 rounded factors (the cancellation in
    # 1 + g(1 - s) included); in bfloat16 each of those ~6 operations rounds to 2^-8 of its intermediate, whose
    # size is at most |w·u|·(1 + |g|) for the gate and |w·g| for up
    eps = F32_EPS if dtype == "float32" else 2.0**-8
    bounds = (6 * eps * np.abs(rw * ru) * (1 + np.abs(rg)) + 1e-30, 3 * eps * np.abs(rw * rg) + 1e-30)
    for a, b, bound in zip(ours, theirs, bounds):
        assert np.all(np.abs(a - b) <= bound), float(np.max(np.abs(a - b) / bound))
    forward = np.array(swiglu(mg, mu).astype(mx.float32))
    np.testing.assert_array_equal(forward, np.array(mlx_lm_swiglu(mg, mu).astype(mx.float32)))


def test_training_step_is_the_same_with_it(demo_model: Path) -> None:
    """The demo model's SFT step (no checkpointing) with train.lean_backward: every MLP swapped, the same loss and
    gradient as the plain step."""
    from mlx.utils import tree_flatten

    from tunedeck.core import config as C
    from tunedeck.core import data, demo, objectives
    from tunedeck.core.batching import tokenize
    from tunedeck.core.model import load_for_training
    from tunedeck.core.step import TrainStep, optimizer

    cfg = C.preset("demo")
    cfg.model.path, cfg.model.dtype, cfg.lora.dropout, cfg.train.method = str(demo_model), "float32", 0.0, "sft"
    loaded = load_for_training(cfg.model, cfg.lora, "float32", 0)
    model = loaded.model
    seqs = tokenize(loaded.tokenizer, data.load(demo.sample_dataset()).examples[:4], 512, kto=False, seed=0)
    idx = np.arange(4)
    results = {}
    for lean in (False, True):
        cfg.train.lean_backward = "on" if lean else "off"
        step = TrainStep(objectives.for_config(cfg), model, optimizer(cfg, 1), compiled=False)
        assert all(type(layer.mlp).__name__.startswith("Lean") == lean for layer in model.layers)
        batch = step.batch(seqs, idx, step_tokens=seqs.trained_tokens(idx))
        metrics, grad = step(batch, None, update=False)
        results[lean] = (metrics, {k: np.array(v) for k, v in tree_flatten(grad)})
    (plain_m, plain_g), (lean_m, lean_g) = results[False], results[True]
    np.testing.assert_allclose(lean_m, plain_m, rtol=1e-5, atol=1e-6)  # a loss over ~500 tokens, float32
    for k, v in plain_g.items():  # sums of ~B·T products: relative ~√(B·T)·ε of the element scale
        np.testing.assert_allclose(lean_g[k], v, rtol=0, atol=1e-4 * float(np.abs(v).max()) + 1e-9)


def _stack_peak(layers: int, lean: bool, x: Any) -> int:
    """Peak bytes above the weights of value_and_grad through `layers` float32 Mistral-shaped layers (the demo
    model's sizes) with LoRA on q and v: the second of two identical calls."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from tunedeck.core import lean_backward

    mx.random.seed(0)
    args = llama.ModelArgs(model_type="llama", hidden_size=256, num_hidden_layers=layers, intermediate_size=768,
                           num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=64,
                           rope_theta=1e6, tie_word_embeddings=False)
    model = llama.Model(args)
    model.freeze()
    linear_to_lora_layers(model, layers, {"rank": 8, "scale": 2.0, "dropout": 0.0,
                                          "keys": ["self_attn.q_proj", "self_attn.v_proj"]})
    assert lean_backward.use(model, lean) == 3 * layers  # the MLP and two LoRALinear a layer

    def loss(m: nn.Module, x: mx.array) -> mx.array:
        for layer in m.model.layers:
            x = layer(x, "causal")
        return x.square().mean()

    fn = nn.value_and_grad(model, loss)
    mx.eval(model.parameters(), fn(model, x))
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(fn(model, x))
    return mx.get_peak_memory() - base


def test_each_layer_keeps_two_fewer_intermediate_arrays() -> None:
    """What a layer keeps for the backward, the slope of the peak over 2 and 6 layers: with lean_backward two
    intermediate-sized arrays a token fewer (the gate's sigmoid and silu). Measured on this CPU 5.59 -> 3.61
    intermediate sizes a token and layer (bench/activation_memory.py); at least 1.5 of the 2 asserted."""
    import mlx.core as mx

    x = mx.random.normal((16, 64, 256))
    slope = {lean: (_stack_peak(6, lean, x) - _stack_peak(2, lean, x)) / 4 for lean in (False, True)}
    tokens, inter = 16 * 64, 768
    assert slope[False] - slope[True] >= 1.5 * tokens * inter * 4, slope


def _lora_chain_peak(n: int, lean: bool, x: Any) -> tuple[int, list[np.ndarray]]:
    """Peak bytes and (loss, gradients) of value_and_grad through n bfloat16 LoRALinear(256, 256) in a row."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.lora import LoRALinear

    from tunedeck.core import lean_backward

    mx.random.seed(0)
    chain = nn.Sequential(*[LoRALinear.from_base(nn.Linear(256, 256), r=8, scale=2.0) for _ in range(n)])
    for layer in chain.layers:  # the base weights in bfloat16; the adapters stay float32, as mlx-lm makes them
        layer.linear.set_dtype(mx.bfloat16)
        layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.1
    chain.freeze()
    chain.unfreeze(keys=["lora_a", "lora_b"], strict=False)
    assert {v.dtype for _, v in tree_flatten(chain.trainable_parameters())} == {mx.float32}
    assert lean_backward.use(chain, lean) == n
    fn = nn.value_and_grad(chain, lambda m, x: m(x).astype(mx.float32).square().sum())
    mx.eval(chain.parameters(), fn(chain, x))
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    loss, grad = fn(chain, x)
    mx.eval(loss, grad)
    return mx.get_peak_memory() - base, [np.array(loss)] + [np.array(g) for _, g in tree_flatten(grad)]


def test_lora_input_keeps_bfloat16_activations_as_they_are() -> None:
    """mlx-lm's LoRALinear in bfloat16 with float32 adapters: with core.lean_backward the same loss and
    gradients as mlx-lm's own (the input's cast to float32 is exact, so only the order of lora_a's gradient sum
    may differ: float32, ≤ 1e-6 relative), and each adapted projection keeps its input in bfloat16 rather than a
    float32 copy: 2 bytes an element less per projection. Measured as the slope of the peak over 16 and 48
    projections in a row (MLX's evaluation order moves a short chain's peak by up to ~half that per projection:
    measured plain 2.16, lean 1.14 bf16 copies a projection), so at least half of it."""
    import mlx.core as mx

    shape = (4, 64, 256)
    x = mx.random.normal(shape).astype(mx.bfloat16)
    peaks = {}
    for lean in (False, True):
        (short, _), (long, grads) = _lora_chain_peak(16, lean, x), _lora_chain_peak(48, lean, x)
        peaks[lean] = ((long - short) / 32, grads)
    (plain_slope, plain), (lean_slope, lean) = peaks[False], peaks[True]
    for a, b in zip(lean, plain):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max()))
    assert plain_slope - lean_slope >= 0.5 * int(np.prod(shape)) * 2, (plain_slope, lean_slope)


def test_switching_off_restores_every_model_it_was_switched_on_for() -> None:
    """`use` swaps classes both ways, for models switched on earlier too (one subclass per class)."""
    import mlx.nn as nn
    from mlx_lm.models import llama
    from mlx_lm.tuner.lora import LoRALinear

    from tunedeck.core import lean_backward

    def model() -> nn.Module:
        return nn.Sequential(llama.MLP(llama.ModelArgs(model_type="llama", hidden_size=8, num_hidden_layers=1,
                                                    intermediate_size=16, num_attention_heads=1, rms_norm_eps=1e-5,
                                                    vocab_size=8)), LoRALinear.from_base(nn.Linear(8, 8), r=2))

    first, second = model(), model()
    assert lean_backward.use(first, True) == 2 and lean_backward.use(second, True) == 2
    assert type(first.layers[0]) is type(second.layers[0]) is not llama.MLP
    assert lean_backward.use(first, False) == 2 and lean_backward.use(second, False) == 2
    assert type(first.layers[0]) is llama.MLP and type(second.layers[1]) is LoRALinear
    assert lean_backward.use(nn.Sequential(nn.Linear(8, 8)), True) == 0  # nothing else is touched


def test_auto_is_on_for_gpu_steps_without_checkpointing() -> None:
    """"auto" where it was measured to pay (README: Performance): GPUs without train.grad_checkpoint only; the
    others keep mlx-lm's backwards."""
    from tunedeck.core.lean_backward import wanted

    assert [wanted("auto", kind, False) for kind in ("cuda", "metal", "cpu")] == [True, True, False]
    assert not any(wanted("auto", kind, True) for kind in ("cuda", "metal", "cpu"))
    assert all(wanted("on", kind, gc) for kind in ("cuda", "cpu") for gc in (False, True))
    assert not any(wanted("off", kind, gc) for kind in ("cuda", "cpu") for gc in (False, True))
