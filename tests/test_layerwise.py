"""Layer-by-layer gradient checkpointing (core.layerwise) against MLX's autodiff of the whole model."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from tests.conftest import small_config
from tunedeck.core import config as C
from tunedeck.core import layerwise, runs
from tunedeck.core.batching import pack
from tunedeck.core.losses import hidden_logps, packed_sft_loss
from tunedeck.core.run_prep import prepare_run
from tunedeck.core.trainer import Trainer


@pytest.mark.parametrize("num_layers", [-1, 2])
def test_gradients_equal_whole_model_autodiff(demo_model: Path, num_layers: int) -> None:
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

    (got, got_n), got_g = layerwise.value_and_grad(model, seq[0][:, :-1], on_hidden)
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


@pytest.mark.parametrize("method", ["sft", "kto"])
def test_checkpointed_training_matches_plain(tmp_path: Path, method: str) -> None:
    """Whole runs with train.grad_checkpoint on (layer by layer) and off: same losses and adapters."""
    out = []
    for gc in (True, False):
        config = small_config(tmp_path / str(gc), method, iters=3, eval_every=3, save_every=3)
        cfg, _ = C.load(config)
        cfg.train.grad_checkpoint = gc
        cfg.lora.dropout = 0.0  # dropout is off under checkpointing
        run_dir = prepare_run(cfg, config, config.parent / "runs")
        assert Trainer(run_dir).run() == 0
        steps = [e for e in runs.read_events(run_dir) if e["type"] == "step"]
        weights = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
        out.append(([e["loss"] for e in steps], {k: np.array(v) for k, v in weights.items()}))
    (loss_gc, w_gc), (loss, w) = out
    np.testing.assert_allclose(loss_gc, loss, rtol=1e-5)
    for k in w:
        np.testing.assert_allclose(w_gc[k], w[k], rtol=1e-4, atol=1e-6, err_msg=k)
