"""Validation that compares with training: KTO's validation batches hold both classes, and its val_loss weights
the classes as a training micro-batch does (issue 21: val 0.539 at step 0 against train 0.655 before any
learning, only because four length-sorted validation batches held 15 desirable examples and 1 undesirable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import small_config
from tunedeck.core import runs
from tunedeck.core.batching import eval_batches


@pytest.mark.parametrize("n, n_u, batch", [(100, 12, 4), (125, 30, 8), (17, 5, 4), (40, 39, 4), (9, 1, 2)])
def test_kto_validation_batches_are_stratified(n: int, n_u: int, batch: int) -> None:
    rng = np.random.default_rng(n)
    lengths = rng.integers(10, 500, n)
    labels = np.ones(n, dtype=bool)
    labels[rng.choice(n, n_u, replace=False)] = False
    batches = eval_batches(lengths, batch, labels=labels)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))  # every example exactly once
    assert max(map(len, batches)) <= batch
    share = n_u / n
    for b in batches:  # each batch's undesirable count is the split's share of it, up to rounding per class
        assert abs((~labels[b]).sum() - share * len(b)) <= 1.5, (b, labels[b])
    if min(n_u, n - n_u) >= len(batches):
        assert all(labels[b].any() and (~labels[b]).any() for b in batches)
    for limit in (1, 2, 3):  # any subset train.eval_batches picks keeps the mix
        for b in eval_batches(lengths, batch, limit=limit, labels=labels):
            assert abs((~labels[b]).sum() - share * len(b)) <= 1.5


def test_sft_validation_batches_are_by_length() -> None:
    lengths = np.array([5, 1, 4, 2, 3])
    assert [b.tolist() for b in eval_batches(lengths, 2)] == [[1, 3], [4, 2], [0]]


@pytest.mark.slow
def test_kto_val_loss_at_step_0_equals_the_first_training_loss(tmp_path: Path, demo_model: Path) -> None:
    """Before any update the policy is the reference: every reward is 0, z is 0, and KTO's loss of an example is
    λ·(1 − σ(0)) = λ/2 of its class. So validation at step 0 must give λ_D/2 and λ_U/2 per class, and a val_loss
    equal to the first step's training loss (n_D·λ_D/2 + n_U·λ_U/2)/B — computed here from the formula."""
    from tests.test_training import train_in_process
    from tunedeck.core import config as C

    config = small_config(tmp_path, "kto", n=200, iters=1, eval_every=1, save_every=1, eval_batches=4)
    cfg = C.load(config)[0]
    cfg.kto.undesirable_weight = 2.25  # unequal weights: the class mix matters (the bundled data's suggestion)
    C.save(cfg, config)
    run_dir, code = train_in_process(config)
    assert code == 0
    events = runs.read_events(run_dir)
    start = next(e for e in events if e["type"] == "start")
    first_eval = next(e for e in events if e["type"] == "eval" and e["step"] == 0)
    step = next(e for e in events if e["type"] == "step")
    cfg = C.load(run_dir / "config.toml")[0]
    lam_d, lam_u, b = cfg.kto.desirable_weight, cfg.kto.undesirable_weight, cfg.train.batch_size
    share_u = start["undesirable"] / (start["desirable"] + start["undesirable"])
    n_u = int(np.clip(round(b * share_u), 1, b - 1))  # the training batch's composition (core.batching.BatchPlan)
    expected = ((b - n_u) * lam_d / 2 + n_u * lam_u / 2) / b
    # rewards differ from 0 only by the reference pass's rounding (a log-prob sum, ~1e-4 at most here); the loss
    # moves by λ·β·δ/4 per example: 1e-4 leaves an order of magnitude
    assert first_eval["val_loss_desirable"] == pytest.approx(lam_d / 2, abs=1e-4)
    assert first_eval["val_loss_undesirable"] == pytest.approx(lam_u / 2, abs=1e-4)
    assert first_eval["val_loss"] == pytest.approx(expected, abs=1e-4)
    assert step["loss"] == pytest.approx(expected, abs=1e-4)
    assert lam_d != lam_u  # otherwise the class mix would not matter and the test could not fail
