"""SFT and KTO as objects the training step calls: which examples they train on, a micro-batch's loss and
gradients, its metrics row, the step event's fields, and what an evaluation adds up.

Every micro-batch yields one metrics row laid out as `Metric`. A batch's KTO KL pairs come as one of three
variants: `NoKL` (SFT, and KTO's apo_zero_unpaired), `SeparateKL` (a forward of their own: a prompt was cut
to fit, or the model cannot share) and `SharedKL` (on the policy forward's prompt keys/values,
core.prefix_kl). The objectives call the math (core.prefix_kl → core.layerwise → core.losses), which never
calls back up.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import layerwise, prefix_kl
from .batching import BatchPlan, Sequences, eval_batches, rotation
from .config import Config
from .data import Example, check_kto_weights
from .losses import hidden_logps, kto_kl, kto_losses_masked, packed_logps, packed_sft_loss


class Metric(IntEnum):
    """The metrics row of a micro-batch (the step adds the rows of its micro-batches, and of its workers)."""

    LOSS = 0  # the micro-batch's weighted share of the step's loss
    TOKENS = 1  # trained (completion) tokens
    CHOSEN_REWARDS = 2  # Σ β·(log π − log π_ref) over the desirable examples
    CHOSEN = 3  # number of desirable examples
    REJECTED_REWARDS = 4  # the same over the undesirable ones
    REJECTED = 5
    KL = 6  # KTO's KL baseline z
    CHOSEN_LOGPS = 7  # Σ log π over the desirable examples
    REJECTED_LOGPS = 8
    GRAD_NORM = 9  # the global gradient norm (on the micro-batch that updates)


N_METRICS = len(Metric)
_BY_NAME = {m.name.lower(): m for m in Metric}
#: averaged over the workers, not added: each one's loss share is pre-scaled by the worker count; z and the norm are equal
WORKER_MEAN = [Metric.LOSS, Metric.KL, Metric.GRAD_NORM]


def metrics_row(**values: mx.array) -> mx.array:
    """A metrics row from values named as `Metric` in lower case ("loss", "chosen_rewards"...); 0 elsewhere."""
    if unknown := set(values) - set(_BY_NAME):
        raise KeyError(f"not a metric: {', '.join(sorted(unknown))}")
    zero = mx.array(0.0)
    return mx.stack([values.get(name, zero) for name in _BY_NAME])


@dataclass(frozen=True)
class NoKL:
    """No KL pairs: SFT, and KTO's apo_zero_unpaired."""


@dataclass(frozen=True)
class SeparateKL:
    """KL pairs for a forward of their own: batching.pack's four arrays and the pairs' reference log-probs."""

    seq: tuple[mx.array, ...]
    ref: mx.array


@dataclass(frozen=True)
class SharedKL:
    """KL pairs on the policy forward's prompt keys/values: prefix_kl.pack's five arrays, reference log-probs."""

    arrays: tuple[mx.array, ...]
    ref: mx.array


KLPairs = NoKL | SeparateKL | SharedKL


def kl_arrays(kl: KLPairs) -> dict[str, Any]:
    """The arrays of a KL variant by field name (what a compiled step takes; `type(kl)(**them)` rebuilds it)."""
    return {f.name: getattr(kl, f.name) for f in fields(kl)}


@dataclass(frozen=True)
class Batch:
    """One micro-batch: batching.pack's (tokens, positions, targets, mask), the labels, the examples' reference
    log-probs (KTO), the KL pairs; and what the host counts."""

    seq: tuple[mx.array, ...]
    desirable: mx.array
    ref: mx.array
    kl: KLPairs = field(default_factory=NoKL)
    tokens: int = 0  # trained (completion) tokens
    seq_tokens: int = 0  # non-padding tokens
    weight: float = 1.0  # its share of the optimizer step's loss (core.step.TrainStep.batch)


def loss_tokens(seqs: Sequences, idx: np.ndarray) -> int:
    """Completion tokens the SFT loss averages over for these examples (batching.pack's mask)."""
    if seqs.trained is not None:
        return int(sum((seqs.trained[i] >= 1).sum() for i in idx))
    return int(sum(len(seqs.ids[i]) - max(int(seqs.starts[i]), 1) for i in idx))


class Objective(ABC):
    """What SFT and KTO share: the plan of batches, the forward passes, the gradients."""

    kto: ClassVar[bool] = False  # batches hold both classes; the examples have KL pairs (core.batching.tokenize)
    uses_reference: ClassVar[bool] = False  # the reference pass (core.reference) runs before step 1
    EVAL_SUMS: ClassVar[int]  # length of `eval_sums`
    kl_pairs = False  # its batches carry KL pairs

    def __init__(self, cfg: Config, group: mx.distributed.Group | None = None) -> None:
        self.cfg, self.group = cfg, group
        self.size = group.size() if group is not None else 1

    def select(self, train: list[Example], valid: list[Example]) -> tuple[list[Example], list[Example], list[str]]:
        """The examples of each split it trains and evaluates on, and warnings about them."""
        return train, valid, []

    def plan(self, seqs: Sequences) -> BatchPlan:
        """The order of the training micro-batches."""
        t = self.cfg.train
        return BatchPlan(seqs.lengths, None, t.batch_size, t.seed)

    def pairing(self, split: str) -> Callable[[Sequences], np.ndarray] | None:
        """How core.batching.tokenize pairs the `split`'s KL partners (None: its default)."""
        return None

    def eval_batches(self, seqs: Sequences) -> list[np.ndarray]:
        """The validation batches (train.eval_batches of them when > 0)."""
        t = self.cfg.train
        return eval_batches(seqs.lengths, t.batch_size, t.eval_batches)

    @property
    def dropout(self) -> bool:
        """Whether lora.dropout applies while training."""
        return self.cfg.lora.dropout > 0

    def step_tokens(self, seqs: Sequences, plan: BatchPlan, step: int) -> int:
        """The loss denominator of optimizer step `step` (0: none across micro-batches)."""
        return 0

    def weight(self, seqs: Sequences, idx: np.ndarray, whole: int, step_tokens: int) -> float:
        """A worker's micro-batch (`idx` of `whole` examples) as its share of the step's loss, times the worker
        count and the accumulation steps (which the step divides out)."""
        return 1.0

    # --- the loss and its gradients -----------------------------------------------------------------

    @abstractmethod
    def loss(self, logps: mx.array, batch: Batch, kl: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        """(loss, metric values) from the summed completion log-probs [B] of the batch and KTO's z."""

    def baseline(self, policy_kl: mx.array, ref_kl: mx.array) -> mx.array:
        """TRL's KL baseline z of a batch's KL pairs, without gradient: over several workers each one's mean,
        averaged, then clamped at 0 (as TRL across processes)."""
        if self.size > 1:
            kl = mx.stop_gradient(mx.mean(policy_kl - ref_kl))
            return mx.maximum(mx.distributed.all_sum(kl, group=self.group) / self.size, 0.0)
        return kto_kl(policy_kl, ref_kl)

    def logps_and_kl(self, model: nn.Module, batch: Batch,
                     baseline: Callable[[mx.array, mx.array], mx.array] = kto_kl) -> tuple[mx.array, mx.array]:
        """The batch's summed completion log-probs [B] and z from its KL pairs, by whole-model forwards."""
        match batch.kl:
            case SharedKL(arrays, ref):
                logps, kl_logps = prefix_kl.policy_and_kl_logps(model, batch.seq, arrays)
                return logps, baseline(kl_logps, ref)
            case SeparateKL(kl_seq, ref):
                return packed_logps(model, *batch.seq), baseline(packed_logps(model, *kl_seq), ref)
        return packed_logps(model, *batch.seq), mx.array(0.0)

    def value_and_grad(self, model: nn.Module, batch: Batch, weight: mx.array, stepwise: bool,
                       eager: bool) -> tuple[tuple[mx.array, dict[str, mx.array]], Any]:
        """((loss × weight, metric values), adapter gradients) of a micro-batch; `stepwise` runs the forward and
        the backward one layer per evaluation (core.layerwise); `eager` evaluates a separate KL pass first."""
        z = mx.array(0.0)
        if isinstance(batch.kl, SeparateKL):  # before the policy's forward: no gradient, its activations freed first
            kl_logps = layerwise.sequence_logps if stepwise else packed_logps
            z = self.baseline(kl_logps(model, *batch.kl.seq), batch.kl.ref)
            if eager:  # measured on CPU: KTO step 1.9x -> 1.5x the gradient step alone
                mx.eval(z)
        if stepwise:
            return self._stepwise(model, batch, weight, z)
        return nn.value_and_grad(model, self._weighted_loss)(model, batch, weight, z)

    def _weighted_loss(self, model: nn.Module, batch: Batch, weight: mx.array,
                       z: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        if isinstance(batch.kl, SharedKL):
            logps, z = self.logps_and_kl(model, batch, self.baseline)
        else:
            logps = packed_logps(model, *batch.seq)
        loss, values = self.loss(logps, batch, z)
        return loss * weight, values

    def _stepwise(self, model: nn.Module, batch: Batch, weight: mx.array,
                  z: mx.array) -> tuple[tuple[mx.array, dict[str, mx.array]], Any]:
        """value_and_grad through core.layerwise; shared KL pairs run between the forward and the backward."""
        tokens, positions = batch.seq[0][:, :-1], batch.seq[1]
        if not isinstance(batch.kl, SharedKL):
            return layerwise.value_and_grad(model, tokens, self._on_hidden(model, batch, weight, z))
        tape, kl_logps = prefix_kl.record_with_kl(model, tokens, positions, batch.kl.arrays)
        z = self.baseline(kl_logps, batch.kl.ref)
        mx.eval(z)
        return layerwise.backward(model, tape, self._on_hidden(model, batch, weight, z))

    def _on_hidden(self, model: nn.Module, batch: Batch, weight: mx.array,
                   z: mx.array) -> Callable[[mx.array], tuple[mx.array, dict[str, mx.array]]]:
        """The weighted loss as a function of the final (normed) hidden states, for core.layerwise."""
        _, positions, targets, mask = batch.seq

        def on_hidden(hidden: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
            loss, values = self.loss(hidden_logps(model, hidden, positions, targets, mask).sum(axis=-1), batch, z)
            return loss * weight, values

        return on_hidden

    # --- reporting ----------------------------------------------------------------------------------

    def step_fields(self, acc: np.ndarray) -> dict[str, float]:
        """The step event's own fields from the step's summed metrics rows."""
        return {}

    @abstractmethod
    def eval_sums(self, model: nn.Module, batch: Batch) -> np.ndarray:
        """What an evaluation adds up over its batches (and workers), for `eval_fields`."""

    def eval_fields(self, sums: np.ndarray) -> dict[str, float]:
        """The eval event's fields."""
        return {"val_loss": sums[0] / max(sums[1], 1)}


class SFT(Objective):
    """Mean cross-entropy over the completion tokens of desirable examples; with gradient accumulation (and
    workers) over all of the step's micro-batches, as transformers' num_items_in_batch."""

    EVAL_SUMS = 2  # Σ loss × tokens, tokens

    def select(self, train: list[Example], valid: list[Example]) -> tuple[list[Example], list[Example], list[str]]:
        dropped = sum(1 for e in train if not e.label)
        warnings = [f"SFT trains on desirable examples only: {dropped} undesirable set aside"] if dropped else []
        return [e for e in train if e.label], [e for e in valid if e.label], warnings

    def step_tokens(self, seqs: Sequences, plan: BatchPlan, step: int) -> int:
        """Completion tokens of all (global) micro-batches of the step: the loss denominator."""
        ga = self.cfg.train.grad_accumulation
        return max(1, sum(loss_tokens(seqs, plan.indices(step * ga + j)) for j in range(ga)))

    def weight(self, seqs: Sequences, idx: np.ndarray, whole: int, step_tokens: int) -> float:
        if not step_tokens:
            return 1.0
        return self.size * self.cfg.train.grad_accumulation * loss_tokens(seqs, idx) / step_tokens

    def loss(self, logps: mx.array, batch: Batch, kl: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        tokens = batch.seq[3].sum()
        return -logps.sum() / mx.maximum(tokens, 1), {"tokens": tokens}

    def eval_sums(self, model: nn.Module, batch: Batch) -> np.ndarray:
        loss, n = packed_sft_loss(model, *batch.seq)
        mx.eval(loss, n)
        return np.array([loss.item() * n.item(), n.item()])


class KTO(Objective):
    """TRL's KTO loss against the reference log-probs computed before step 1; the mean over the micro-batch."""

    kto = True
    uses_reference = True
    # Σ loss, examples, Σ chosen rewards, #chosen, Σ rejected rewards, #rejected, #agreeing, Σ loss of each class
    EVAL_SUMS = 9

    def __init__(self, cfg: Config, group: mx.distributed.Group | None = None) -> None:
        super().__init__(cfg, group)
        self.kl_pairs = cfg.kto.loss_type == "kto"
        self.undesirable_share = 0.0  # of a training micro-batch (set by `plan`): weights val_loss as training's

    def select(self, train: list[Example], valid: list[Example]) -> tuple[list[Example], list[Example], list[str]]:
        nd, k = sum(e.label for e in train), self.cfg.kto
        msg = check_kto_weights(nd, len(train) - nd, k.desirable_weight, k.undesirable_weight)
        return train, valid, [msg] if msg else []

    def plan(self, seqs: Sequences) -> BatchPlan:
        """Both classes in every micro-batch; with kto.kl_pairs = "batch" the same micro-batches every epoch
        (their KL pairs are fixed, so the reference log-probs are computed once), in a new order each epoch."""
        c = self.cfg
        plan = BatchPlan(seqs.lengths, seqs.labels, c.train.batch_size, c.train.seed, fixed=c.kto.kl_pairs == "batch")
        self.undesirable_share = plan.undesirable_per_batch / c.train.batch_size
        return plan

    def eval_batches(self, seqs: Sequences) -> list[np.ndarray]:
        """Stratified: every batch holds both classes in the validation split's proportion."""
        t = self.cfg.train
        return eval_batches(seqs.lengths, t.batch_size, t.eval_batches, labels=seqs.labels)

    def pairing(self, split: str) -> Callable[[Sequences], np.ndarray] | None:
        """kto.kl_pairs = "batch": TRL's rotation inside each micro-batch of the plan (training) or of the
        evaluation batches (validation)."""
        c = self.cfg
        if c.kto.kl_pairs != "batch":
            return None
        if split == "train":
            return lambda seqs: rotation(self.plan(seqs).batches(), len(seqs), c.train.seed)
        return lambda seqs: rotation(self.eval_batches(seqs), len(seqs), c.train.seed + 1)

    @property
    def dropout(self) -> bool:
        """Off, as TRL (disable_dropout=True): the policy/reference log-ratio must be 0 at step 0."""
        return False

    def weight(self, seqs: Sequences, idx: np.ndarray, whole: int, step_tokens: int) -> float:
        return self.size * len(idx) / whole  # the example mean over the global micro-batch

    def loss(self, logps: mx.array, batch: Batch, kl: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
        k = self.cfg.kto
        losses, rewards = kto_losses_masked(logps, batch.ref, batch.desirable, kl, k.beta, k.desirable_weight,
                                            k.undesirable_weight, k.loss_type)
        d = batch.desirable.astype(mx.float32)
        u = 1 - d
        lp = mx.stop_gradient(logps)
        return losses.mean(), {
            "tokens": batch.seq[3].sum(), "chosen_rewards": (rewards * d).sum(), "chosen": d.sum(),
            "rejected_rewards": (rewards * u).sum(), "rejected": u.sum(), "kl": kl,
            "chosen_logps": (lp * d).sum(), "rejected_logps": (lp * u).sum()}

    def step_fields(self, acc: np.ndarray) -> dict[str, float]:
        nc, nr = acc[Metric.CHOSEN], acc[Metric.REJECTED]
        rc = acc[Metric.CHOSEN_REWARDS] / nc if nc else math.nan
        rr = acc[Metric.REJECTED_REWARDS] / nr if nr else math.nan
        return dict(rewards_chosen=rc, rewards_rejected=rr, margin=rc - rr,
                    kl=acc[Metric.KL] / self.cfg.train.grad_accumulation,
                    logps_chosen=acc[Metric.CHOSEN_LOGPS] / nc if nc else math.nan,
                    logps_rejected=acc[Metric.REJECTED_LOGPS] / nr if nr else math.nan)

    def eval_sums(self, model: nn.Module, batch: Batch) -> np.ndarray:
        """z per batch: each worker evaluates whole batches, so a batch's z is as in one process."""
        k = self.cfg.kto
        logps, kl = self.logps_and_kl(model, batch)
        losses, rewards = kto_losses_masked(logps, batch.ref, batch.desirable, kl, k.beta, k.desirable_weight,
                                            k.undesirable_weight, k.loss_type)
        mx.eval(losses, rewards)
        rw, d = np.array(rewards, dtype=np.float64), np.array(batch.desirable, dtype=bool)
        agree = (rw[d] > 0).sum() + (rw[~d] < 0).sum()  # the sign says the label (a reward of 0 says neither)
        ls = np.array(losses, dtype=np.float64)
        return np.array([ls.sum(), len(d), rw[d].sum(), d.sum(), rw[~d].sum(), (~d).sum(), agree, ls[d].sum(),
                         ls[~d].sum()])

    def eval_fields(self, sums: np.ndarray) -> dict[str, float]:
        """val_loss weights the two classes' mean losses as a training micro-batch holds them (so it compares
        with the training loss whatever the validation split's mix); the per-class losses beside it."""
        rc = float(sums[2] / sums[3]) if sums[3] else math.nan
        rr = float(sums[4] / sums[5]) if sums[5] else math.nan
        ld = float(sums[7] / sums[3]) if sums[3] else math.nan
        lu = float(sums[8] / sums[5]) if sums[5] else math.nan
        w = self.undesirable_share
        loss = (1 - w) * ld + w * lu if sums[3] and sums[5] and w else float(sums[0] / max(sums[1], 1))
        return {"val_loss": loss, "val_loss_desirable": ld, "val_loss_undesirable": lu, "val_rewards_chosen": rc,
                "val_rewards_rejected": rr, "val_margin": rc - rr,
                "val_reward_accuracy": float(sums[6] / sums[1]) if sums[1] else math.nan}


def for_config(cfg: Config, group: mx.distributed.Group | None = None) -> Objective:
    """The objective of `train.method`."""
    return KTO(cfg, group) if cfg.train.method == "kto" else SFT(cfg, group)
