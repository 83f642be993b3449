"""KTO's KL pairs on the policy forward's prompt keys/values (core.prefix_kl), against separate forwards."""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from tests.conftest import F32_EPS, kl_atol, small_config
from tunedeck.core import data, demo, prefix_kl, runs
from tunedeck.core.batching import pack, tokenize
from tunedeck.core.losses import packed_logps
from tunedeck.core.trainer import Trainer


@pytest.fixture(scope="module")
def lora_model(demo_model: Path):
    """The demo model with LoRA on q,v and random (non-zero) adapter weights, tokenised sample data."""
    import mlx_lm
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tok = mlx_lm.load(str(demo_model))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                                      "keys": ["self_attn.q_proj", "self_attn.v_proj"]})
    mx.random.seed(3)
    model.update(tree_map(lambda p: 0.05 * mx.random.normal(p.shape), model.trainable_parameters()))
    seqs = tokenize(tok, data.load(demo.sample_dataset()).examples[:48], 512, kto=True, seed=0)
    return model, seqs


def separate(model, seqs, idx):
    kl = packed_logps(model, *map(mx.array, pack([seqs.kl_ids[i] for i in idx], seqs.kl_starts[idx])))
    return packed_logps(model, *map(mx.array, pack([seqs.ids[i] for i in idx], seqs.starts[idx]))), kl


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 5], [7], [10, 30, 11, 40]])
def test_kl_logps_equal_a_separate_forward(lora_model, rows) -> None:
    model, seqs = lora_model
    idx = np.array(rows)
    assert seqs.kl_shared[idx].all()
    starts = seqs.starts[idx]
    assert len(idx) == 1 or len(set(starts.tolist())) > 1  # prompts of different lengths in one batch
    seq = tuple(map(mx.array, pack([seqs.ids[i] for i in idx], starts)))
    kl = tuple(map(mx.array, prefix_kl.pack([seqs.kl_ids[i] for i in idx], seqs.kl_starts[idx])))
    policy, policy_kl = prefix_kl.policy_and_kl_logps(model, seq, kl)
    want, want_kl = separate(model, seqs, idx)
    np.testing.assert_allclose(np.array(policy), np.array(want), rtol=1e-5)
    np.testing.assert_allclose(np.array(policy_kl), np.array(want_kl), rtol=1e-5)
    assert np.abs(np.array(policy_kl)).min() > 1  # real log-probs, not masked-out zeros


def test_no_gradient_flows_through_the_kl_pass(lora_model) -> None:
    model, seqs = lora_model
    idx = np.arange(4)
    seq = tuple(map(mx.array, pack([seqs.ids[i] for i in idx], seqs.starts[idx])))
    kl = tuple(map(mx.array, prefix_kl.pack([seqs.kl_ids[i] for i in idx], seqs.kl_starts[idx])))

    def both(m):
        p, k = prefix_kl.policy_and_kl_logps(m, seq, kl)
        return p.sum() + 3.0 * k.sum()

    def policy_only(m):
        return packed_logps(m, *seq).sum()

    _, g = nn.value_and_grad(model, both)(model)
    _, g_ref = nn.value_and_grad(model, policy_only)(model)
    for (name, a), (_, b) in zip(tree_flatten(g), tree_flatten(g_ref)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6, err_msg=name)
    assert any(np.abs(np.array(a)).max() > 0 for _, a in tree_flatten(g))


def test_truncated_prompts_are_not_shared(lora_model, demo_model: Path) -> None:
    import mlx_lm

    _, tok = mlx_lm.load(str(demo_model))
    seqs = tokenize(tok, data.load(demo.sample_dataset()).examples[:48], 96, kto=True, seed=0)
    assert seqs.truncated and not seqs.kl_shared.all()
    for i in range(len(seqs)):
        same = seqs.kl_starts[i] == seqs.starts[i] and np.array_equal(seqs.ids[i][: seqs.starts[i]],
                                                                      seqs.kl_ids[i][: seqs.kl_starts[i]])
        assert bool(seqs.kl_shared[i]) == bool(same)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_with_and_without_sharing_agree(tmp_path: Path, monkeypatch, checkpointing: bool) -> None:
    """Whole KTO runs (including batches that must fall back: prompts cut to fit) give the same losses,
    KL estimates and rewards either way, with plain and with layer-by-layer checkpointed steps."""
    results = []
    packs = []
    real_pack = prefix_kl.pack
    def counting(*a, **k):  # the training and evaluation batches' packs (core.step), not the reference pass's
        packs.append(sys._getframe(1).f_globals["__name__"].endswith(".step"))
        return real_pack(*a, **k)

    monkeypatch.setattr(prefix_kl, "pack", counting)
    for share in (True, False):
        if not share:
            monkeypatch.setattr(prefix_kl, "supported", lambda model: False)
        config = small_config(tmp_path / str(share), "kto", iters=4, eval_every=4, save_every=4)
        from tunedeck.core import config as C
        from tunedeck.core.run_prep import prepare_run

        cfg, _ = C.load(config)
        cfg.data.max_seq_len = 160  # some prompts get cut: their batches take the separate KL forward
        cfg.train.grad_checkpoint = checkpointing
        run_dir = prepare_run(cfg, config, config.parent / "runs")
        assert Trainer(run_dir).run() == 0
        results.append([e for e in runs.read_events(run_dir) if e["type"] in ("step", "eval")])
    shared, separate_ = results
    assert len(shared) == len(separate_) == 6  # eval at 0, 4 steps, eval at 4
    assert 0 < sum(packs) < 6  # of 4 training and 2 evaluation batches, some shared and some not
    # Absolute tolerances from the float32 error of the log-prob sums (tests/conftest.py): KL from two sums
    # per pair; rewards are β·(Σlog π − Σlog π_ref) (β = 0.1 here), so β times the same; the losses are
    # 1 − σ(β(r − z))-shaped, whose slope is at most β/4 in r and z.
    beta = 0.1
    atol = {"kl": kl_atol(), "rewards_chosen": beta * kl_atol(), "rewards_rejected": beta * kl_atol(),
            "loss": beta / 4 * 2 * kl_atol(), "val_loss": beta / 4 * 2 * kl_atol()}
    for a, b in zip(shared, separate_):
        for key in atol:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=atol[key]), key
    assert any(e.get("kl", 0) > 0 for e in shared)  # the KL baseline is live, not clamped to 0 throughout


def test_last_layer_at_the_trained_positions_only(lora_model) -> None:
    """losses.hidden_at runs the last block's queries and MLP at the completion positions alone: same
    hidden states, log-probs and gradients as the whole forward, gathered."""
    from tunedeck.core.losses import hidden_at

    model, seqs = lora_model
    idx = np.array([3, 17, 25, 8])
    tokens, positions, targets, mask = map(mx.array, pack([seqs.ids[i] for i in idx], seqs.starts[idx]))
    got = hidden_at(model, tokens[:, :-1], positions)
    want = mx.take_along_axis(model.model(tokens[:, :-1]), positions[..., None], axis=1)
    trained = np.array(mask, bool)
    np.testing.assert_allclose(np.array(got)[trained], np.array(want)[trained], rtol=1e-5, atol=1e-5)

    def whole(m):
        return (mx.take_along_axis(m(tokens[:, :-1]), positions[..., None], axis=1).sum(-1) * mask).sum()

    def partial_(m):
        from tunedeck.core.losses import head

        return (head(m, hidden_at(m, tokens[:, :-1], positions)).sum(-1) * mask).sum()

    _, g_want = nn.value_and_grad(model, whole)(model)
    _, g_got = nn.value_and_grad(model, partial_)(model)
    # Each LoRA gradient element sums contributions from every input position (n of them) and the two
    # paths add them in different orders, so an element's error scales with the tensor's magnitude, not its
    # own (elements that nearly cancel have large relative error): atol = √n·ε·max|g|; rtol covers the rest.
    n = tokens[:, :-1].size
    for (name, a), (_, b) in zip(tree_flatten(g_got), tree_flatten(g_want)):
        b = np.array(b)
        atol = np.sqrt(n) * F32_EPS * np.abs(b).max()
        np.testing.assert_allclose(np.array(a), b, rtol=1e-4, atol=atol, err_msg=name)


def _synthetic_kl(n: int, length: int, start: int):
    """Random sequences of one length and prompt length, each with a KL pair (its prompt, the next one's completion)."""
    from tunedeck.core.batching import Sequences

    rng = np.random.default_rng(5)
    ids = [rng.integers(10, 2000, length).astype(np.int32) for _ in range(n)]
    seqs = Sequences(ids=ids, starts=np.full(n, start), labels=np.arange(n) % 2 == 0)
    seqs.set_kl_pairs([np.concatenate([ids[i][:start], ids[(i + 1) % n][start:]]) for i in range(n)], seqs.starts.copy())
    return seqs


def one_at_a_time(model: nn.Module, ids: list[np.ndarray], starts: np.ndarray) -> np.ndarray:
    """The oracle: each sequence's completion log-prob from mlx-lm's own forward of that sequence alone (no
    batch, no padding, every position's logits)."""
    out = []
    for seq, start in zip(ids, starts):
        logits = model(mx.array(seq[None, :-1])).astype(mx.float32)[0]
        lp = mx.take_along_axis(logits, mx.array(seq[1:])[:, None], axis=-1)[:, 0] - mx.logsumexp(logits, axis=-1)
        out.append(lp[int(start) - 1 :].sum().item())
    return np.array(out, np.float32)


_ORACLE: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # one_at_a_time's answers per case, computed once


@pytest.mark.parametrize(("path", "case"), [("unpadded", "sample"), ("unpadded", "truncated"),
                                            ("unpadded", "equal_prompts"), ("padded", "sample"),
                                            ("padded_stepwise", "truncated"), ("padded_stepwise", "equal_prompts")])
def test_reference_pass_equals_separate_forwards(lora_model, demo_model: Path, monkeypatch, path: str,
                                                 case: str) -> None:
    """core.reference.compute_set (KL pairs on their examples' prompt keys/values, batches bucketed by both
    lengths; "unpadded": the dense parts on the real tokens only, core.unpadded; "padded": the padded rows,
    whole-model or one layer per evaluation) and core.reference.compute give each sequence's log-prob as
    mlx-lm's forward of that sequence alone."""
    import mlx_lm

    from tests.conftest import logp_sum_atol
    from tunedeck.core import reference, unpadded

    model, seqs = lora_model
    assert unpadded.supported(model)
    if path != "unpadded":
        monkeypatch.setattr(unpadded, "supported", lambda model: False)
    if case == "truncated":  # prompts cut to fit: some pairs cannot share theirs
        seqs = tokenize(mlx_lm.load(str(demo_model))[1], data.load(demo.sample_dataset()).examples[:48], 96,
                        kto=True, seed=0)
        assert 0 < seqs.kl_shared.sum() < len(seqs)
    elif case == "equal_prompts":  # every prompt the prefix's width: the KL pass's "causal" mask
        seqs = _synthetic_kl(12, 70, 50)
    logps, kl = reference.compute_set(model, seqs, 8, stepwise=path == "padded_stepwise")
    alone = reference.compute(model, seqs.ids, seqs.starts, 8, stepwise=path == "padded_stepwise")
    if case not in _ORACLE:
        _ORACLE[case] = one_at_a_time(model, seqs.ids, seqs.starts), one_at_a_time(model, seqs.kl_ids, seqs.kl_starts)
    want, want_kl = _ORACLE[case]
    # each sum is one sequence's log-prob computed two ways in float32 (tests/conftest.py logp_sum_atol, at the
    # longest completion of these sets)
    longest = max(max(len(s) - st for s, st in zip(seqs.ids, seqs.starts)),
                  max(len(s) - st for s, st in zip(seqs.kl_ids, seqs.kl_starts)))
    atol = logp_sum_atol(tokens=int(longest))
    np.testing.assert_allclose(logps, want, rtol=0, atol=atol)
    np.testing.assert_allclose(alone, want, rtol=0, atol=atol)
    np.testing.assert_allclose(kl, want_kl, rtol=0, atol=atol)
    assert np.abs(kl).min() > 1  # every pair computed, none left at 0


def test_reference_pass_reports_every_sequence(lora_model, demo_model: Path) -> None:
    """The progress count of compute_set (examples and KL pairs, shared or not) adds up to core.reference.work's."""
    import mlx_lm

    from tunedeck.core import reference

    model, _ = lora_model
    seqs = tokenize(mlx_lm.load(str(demo_model))[1], data.load(demo.sample_dataset()).examples[:40], 96, kto=True, seed=0)
    done: list[int] = []
    reference.compute_set(model, seqs, 8, done.append)
    assert sum(done) == reference.work(model, seqs, 8, None) == 2 * len(seqs)
    for rank in range(2):  # two workers split the batches: each its own part, together all of them
        done.clear()
        reference.compute_set(model, seqs, 8, done.append, part=(rank, 2))
        assert sum(done) == reference.work(model, seqs, 8, (rank, 2))
    assert reference.work(model, seqs, 8, (0, 2)) + reference.work(model, seqs, 8, (1, 2)) == 2 * len(seqs)
