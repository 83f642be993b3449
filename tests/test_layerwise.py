"""Layer-by-layer gradient checkpointing (core.layerwise) against MLX's autodiff of the whole model."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from tests.conftest import F32_EPS, small_config
from tunedeck.core import config as C
from tunedeck.core import dequantize, layerwise, runs
from tunedeck.core.batching import pack
from tunedeck.core.losses import hidden_logps, packed_logps, packed_sft_loss
from tunedeck.core.run_prep import prepare_run
from tunedeck.core.trainer import Trainer


@pytest.mark.parametrize(("num_layers", "compiled"), [(-1, False), (2, False), (2, True)])
def test_gradients_equal_whole_model_autodiff(demo_model: Path, num_layers: int, compiled: bool) -> None:
    """`compiled`: each layer's forward and backward through core.layer_compile (train.compile under
    train.grad_checkpoint), one trace per layer structure shared by the layers (here two structures: with and
    without adapters)."""
    import mlx_lm
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = mlx_lm.load(str(demo_model))
    model.freeze()
    n = len(model.layers) if num_layers < 0 else num_layers  # 2: the lower layers carry no adapters
    linear_to_lora_layers(model, n, {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                     "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]})
    mx.random.seed(1)
    model.update(tree_map(lambda p: 0.05 * mx.random.normal(p.shape), model.trainable_parameters()))
    assert layerwise.supported(model)
    rng = np.random.default_rng(0)
    ids = [rng.integers(10, 2000, k).astype(np.int32) for k in (60, 90, 77)]
    seq = tuple(map(mx.array, pack(ids, np.array([20, 50, 30]))))

    (want, want_n), want_g = nn.value_and_grad(model, lambda m: packed_sft_loss(m, *seq))(model)

    def on_hidden(hidden):
        lps = hidden_logps(model, hidden, *seq[1:])
        return -lps.sum() / seq[3].sum(), seq[3].sum()

    layerwise.use_compiled(model, compiled)
    (got, got_n), got_g = layerwise.value_and_grad(model, seq[0][:, :-1], on_hidden)
    got_lp = layerwise.sequence_logps(model, *seq)
    traced = getattr(model, layerwise._COMPILED, None)
    assert (traced is not None and len(traced._by_signature) == 1 + (n < len(model.layers))) == compiled
    layerwise.use_compiled(model, False)
    from tests.conftest import logp_sum_atol

    np.testing.assert_allclose(np.array(got_lp), np.array(packed_logps(model, *seq)), rtol=0,
                               atol=logp_sum_atol(tokens=int(seq[3].sum(axis=-1).max())))  # at the longest completion
    assert got.item() == pytest.approx(want.item(), rel=1e-6) and got_n.item() == want_n.item()
    flat_want, flat_got = tree_flatten(want_g), tree_flatten(got_g)
    assert [k for k, _ in flat_got] == [k for k, _ in flat_want] and len(flat_got) == 3 * 2 * n
    for (k, a), (_, b) in zip(flat_got, flat_want):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-7, err_msg=k)
    assert max(np.abs(np.array(b)).max() for _, b in flat_want) > 1e-4


def test_unsupported_when_parameters_outside_the_layers(demo_model: Path) -> None:
    import mlx_lm

    model, _ = mlx_lm.load(str(demo_model))
    model.freeze()
    model.lm_head.unfreeze()
    assert not layerwise.supported(model)


@pytest.mark.parametrize(("method", "compiled"), [("sft", False), ("kto", True)])  # eager KTO: test_prefix_kl
def test_checkpointed_training_matches_plain(tmp_path: Path, method: str, compiled: bool) -> None:
    """Whole runs with train.grad_checkpoint on (layer by layer; `compiled`: train.compile = "on", each layer's
    functions compiled, in the reference pass and the KL pass's recording forward too) and off: same losses
    and adapters."""
    out = []
    for gc in (True, False):
        config = small_config(tmp_path / str(gc), method, iters=3, eval_every=3, save_every=3)
        cfg, _ = C.load(config)
        cfg.train.grad_checkpoint = gc
        cfg.train.compile = "on" if gc and compiled else "off"
        cfg.lora.dropout = 0.0  # dropout is off under checkpointing
        run_dir = prepare_run(cfg, config, config.parent / "runs")
        assert Trainer(run_dir).run() == 0
        steps = [e for e in runs.read_events(run_dir) if e["type"] == "step"]
        weights = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
        out.append(([e["loss"] for e in steps], {k: np.array(v) for k, v in weights.items()}))
    (loss_gc, w_gc), (loss, w) = out
    np.testing.assert_allclose(loss_gc, loss, rtol=1e-5)
    # Adam divides each gradient element by its running RMS: where an element's gradient is as small as the two
    # paths' float32 rounding difference, its step (up to lr) can change, in either run. So nearly every element
    # agrees tightly and the rare exception stays within the steps' total size, 2·iters·lr.
    lr, iters = cfg.learning_rate, cfg.train.iters
    for k in w:
        off = np.abs(w_gc[k] - w[k]) > 1e-4 * np.abs(w[k]) + 1e-6
        assert off.mean() <= 0.01, k
        np.testing.assert_allclose(w_gc[k], w[k], rtol=0, atol=2 * iters * lr, err_msg=k)


@pytest.fixture(scope="module")
def quantized_lora(demo_model: Path):
    """The demo model quantized to 4 bits (core.model.quantize_linear) with random LoRA adapters on q, v."""
    import mlx_lm
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from tunedeck.core.model import quantize_linear

    model, _ = mlx_lm.load(str(demo_model))
    quantize_linear(model, 4)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                                     "keys": ["self_attn.q_proj", "self_attn.v_proj"]})
    mx.random.seed(2)
    model.update(tree_map(lambda p: 0.05 * mx.random.normal(p.shape), model.trainable_parameters()))
    rng = np.random.default_rng(1)
    ids = [rng.integers(10, 2000, k).astype(np.int32) for k in (60, 90, 77)]
    return model, tuple(map(mx.array, pack(ids, np.array([20, 50, 30]))))


def test_dequantized_products_equal_quantized_matmul(quantized_lora) -> None:
    """Each quantized projection, multiplied through its dequantized weight (model.quantized_matmul =
    "dequantize"), gives quantized_matmul's output within the float32 error of a K-term dot product."""
    model, seq = quantized_lora
    x = mx.random.normal((5, 33, model.args.hidden_size))
    layer = model.model.layers[1]
    for name, m in layer.named_modules():
        if type(m) is not nn.QuantizedLinear or m.weight.shape[-1] * 32 // m.bits != x.shape[-1]:
            continue
        want = m(x)
        with dequantize.retyped([(m, dequantize.DequantizedLinear)]):
            got = m(x)
        w = mx.dequantize(m.weight, m.scales, m.biases, group_size=m.group_size, bits=m.bits)
        # both sum K products in float32 in different orders (each within K·ε·Σ|x||w| of the exact sum), and a
        # weight rebuilt as scale·q + bias may differ by one rounding (ε·Σ|x||w|): (2K + 1)·ε·Σ|x||w|
        bound = (2 * x.shape[-1] + 1) * F32_EPS * (mx.abs(x) @ mx.abs(w).T)
        assert bool(mx.all(mx.abs(got - want) <= bound)), name
        assert type(m) is nn.QuantizedLinear  # restored after the block


def test_one_dequantized_weight_per_context(quantized_lora, monkeypatch) -> None:
    """Inside one dequantizing context a projection called twice (the examples, then KTO's KL completions beside
    them: core.prefix_kl.record_with_kl) dequantizes its weight once; a nested context leaves it to the outer
    one; on leaving, the copy is dropped and the module is a plain QuantizedLinear again, its parameters as
    before."""
    model, _ = quantized_lora
    m = model.model.layers[0].mlp.down_proj
    before = {k for k, _ in tree_flatten(m.parameters())}
    calls = []
    real = mx.dequantize
    monkeypatch.setattr(mx, "dequantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = mx.random.normal((2, 5, m.weight.shape[-1] * 32 // m.bits))
    with dequantize.dequantizing(m, True):
        a = m(x)
        with dequantize.dequantizing(m, True):
            b = m(x[:, :2])
        c = m(x)
    assert len(calls) == 1
    assert bool(mx.array_equal(a, c)) and b.shape == (2, 2, a.shape[-1])  # the same product from the same copy
    assert type(m) is nn.QuantizedLinear and {k for k, _ in tree_flatten(m.parameters())} == before
    assert not [k for k in vars(m) if "dequantized" in k]


def test_a_quantized_head_is_dequantized_when_asked(quantized_lora, monkeypatch) -> None:
    """The output head (core.losses.head) multiplies through its dequantized weight where the model asks for it,
    never through quantized_matmul (30-40x slower for these products on CPUs), within the same float32 bound as
    the layers' products; without the ask it stays the kernel."""
    from tunedeck.core.losses import head

    model, _ = quantized_lora
    assert type(model.lm_head) is nn.QuantizedLinear
    x = mx.random.normal((3, 7, model.args.hidden_size))
    kernel = head(model, x)
    m = model.lm_head
    w = mx.dequantize(m.weight, m.scales, m.biases, group_size=m.group_size, bits=m.bits)
    calls = []
    real = mx.quantized_matmul
    monkeypatch.setattr(mx, "quantized_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    dequantize.use(model, True)
    try:
        got = head(model, x)
    finally:
        dequantize.use(model, False)
    assert not calls and type(model.lm_head) is nn.QuantizedLinear
    bound = (2 * x.shape[-1] + 1) * F32_EPS * (mx.abs(x) @ mx.abs(w).T)  # as for the layers' products, above
    assert bool(mx.all(mx.abs(got - kernel) <= bound))
    head(model, x)
    assert calls  # not asked: the kernel


def test_dequantized_layerwise_step_equals_the_kernel(quantized_lora) -> None:
    """The layer-by-layer log-probs and gradients of a quantized model are those of quantized_matmul with
    every layer's products through dequantized weights."""
    from tests.conftest import logp_sum_atol

    model, seq = quantized_lora

    def on_hidden(hidden):
        return -hidden_logps(model, hidden, *seq[1:]).sum() / seq[3].sum(), seq[3].sum()

    out = []
    for on in (False, True):
        dequantize.use(model, on)
        out.append((layerwise.sequence_logps(model, *seq), layerwise.value_and_grad(model, seq[0][:, :-1], on_hidden)))
    dequantize.use(model, False)
    (lp_k, ((loss_k, _), g_k)), (lp_d, ((loss_d, _), g_d)) = out
    # log-prob sums: as any two float32 evaluations of them (tests/conftest.py), at the longest completion (70)
    np.testing.assert_allclose(np.array(lp_d), np.array(lp_k), rtol=0, atol=logp_sum_atol(tokens=70))
    assert loss_d.item() == pytest.approx(loss_k.item(), rel=1e-5)
    n = seq[0][:, :-1].size  # each gradient element sums n positions' contributions: √n·ε·max|g| (test_prefix_kl)
    for (k, a), (_, b) in zip(tree_flatten(g_d), tree_flatten(g_k)):
        b = np.array(b)
        np.testing.assert_allclose(np.array(a), b, rtol=1e-4, atol=np.sqrt(n) * F32_EPS * np.abs(b).max(), err_msg=k)


def test_dequantize_choice_per_backend() -> None:
    assert dequantize.chosen("auto", "cuda") and dequantize.chosen("auto", "cpu")
    assert not dequantize.chosen("auto", "metal") and dequantize.chosen("dequantize", "metal")
    assert not dequantize.chosen("kernel", "cuda")


def test_compile_only_when_asked() -> None:
    """train.compile "auto" compiles no step (core.step.wants_compile: on the H200 a real dataset's new batch
    shapes made compiled steps 36x slower than eager ones), only the optimizer update on GPUs; "on" compiles
    both everywhere, "off" neither."""
    from tunedeck.core.step import compiles_update, wants_compile

    cfg = C.Config()
    assert cfg.train.compile == "auto" and not wants_compile(cfg)
    assert compiles_update(cfg, "cuda") and compiles_update(cfg, "metal") and not compiles_update(cfg, "cpu")
    cfg.train.compile = "on"
    assert wants_compile(cfg) and compiles_update(cfg, "cpu")
    cfg.train.compile = "off"
    assert not wants_compile(cfg) and not compiles_update(cfg, "cuda")


@pytest.mark.parametrize("method", ["sft", "kto"])
def test_validation_by_layer_equals_the_whole_model(demo_model: Path, method: str) -> None:
    """Validation under layer-by-layer checkpointing (core.layerwise.by_layer: every layer call its own
    evaluation) gives the whole-model numbers, evaluating once per layer."""
    import mlx_lm
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from tunedeck.core import data, demo, objectives
    from tunedeck.core.batching import tokenize
    from tunedeck.core.step import TrainStep, optimizer

    model, tok = mlx_lm.load(str(demo_model))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                                     "keys": ["self_attn.q_proj", "self_attn.v_proj"]})
    cfg = C.Config()
    cfg.train.method, cfg.train.grad_checkpoint = method, True
    objective = objectives.for_config(cfg)
    seqs = tokenize(tok, data.load(demo.sample_dataset()).examples[:8], 512, kto=method == "kto", seed=0)
    step = TrainStep(objective, model, optimizer(cfg, 1), compiled=False)
    ref = (np.zeros(len(seqs), np.float32), np.zeros(len(seqs), np.float32))
    batch = step.batch(seqs, np.arange(4), ref if method == "kto" else None, shard=False)
    model.eval()
    whole = objective.eval_sums(model, batch)
    evals = []
    real_eval = mx.eval
    mx.eval = lambda *a: evals.append(1) or real_eval(*a)
    try:
        with step.evaluating():
            layered = objective.eval_sums(model, batch)
    finally:
        mx.eval = real_eval
    assert type(model.model.layers[0]) is type(model.model.layers[-1])  # restored
    np.testing.assert_allclose(layered, whole, rtol=1e-5)
    assert len(evals) >= len(model.model.layers)


def test_head_logps_a_row_at_a_time(quantized_lora, monkeypatch) -> None:
    """core.layerwise.head_logps evaluates the logits a few rows at a time (HEAD_ELEMENTS): one row each here,
    the same sums as the whole batch at once (each row's own arithmetic, only split: within one ulp-walk)."""
    from tests.conftest import logp_sum_atol
    from tunedeck.core.losses import packed_logps

    model, seq = quantized_lora
    want = packed_logps(model, *seq)
    monkeypatch.setattr(layerwise, "HEAD_ELEMENTS", 1)
    np.testing.assert_allclose(np.array(layerwise.sequence_logps(model, *seq)), np.array(want), rtol=0,
                               atol=logp_sum_atol(tokens=70))
