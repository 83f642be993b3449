"""The training step: a micro-batch's arrays, its loss and gradients (core.objectives), their accumulation over
train.grad_accumulation micro-batches and over the workers, clipping, and the AdamW update.

With train.compile = "on", as mlx-lm's tuner, the whole step (optimizer update included) is one `mx.compile`d
function; with layer-by-layer checkpointing (core.layerwise) it is evaluated layer by layer instead, each layer's
forward and backward compiled (core.layer_compile). By default it runs eagerly (`wants_compile`), and on GPUs
its optimizer update, whose shapes are the adapters' and never change, is one compiled function
(`compiles_update`). train.lean_backward swaps in backwards that keep less (core.lean_backward).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from . import backend, layerwise, lean_backward, prefix_kl
from .batching import Sequences, pack
from .config import Config
from .objectives import Batch, KLPairs, NoKL, Objective, SeparateKL, SharedKL, kl_arrays, metrics_row


def schedule(cfg: Config, total_steps: int) -> Callable[[mx.array], mx.array]:
    """Linear warmup from 0, then cosine / linear decay to min_lr_ratio, or constant."""
    lr, t = cfg.learning_rate, cfg.train
    decay_steps = max(total_steps - t.warmup_steps, 1)
    end = lr * t.min_lr_ratio
    main = {
        "cosine": lambda: optim.cosine_decay(lr, decay_steps, end),
        "linear": lambda: optim.linear_schedule(lr, end, decay_steps),
        "constant": lambda: (lambda step: mx.array(lr, dtype=mx.float32)),
    }[t.lr_schedule]()
    if t.warmup_steps <= 0:
        return main
    return optim.join_schedules([optim.linear_schedule(0.0, lr, t.warmup_steps), main], [t.warmup_steps])


def optimizer(cfg: Config, total_steps: int) -> optim.Optimizer:
    """AdamW: bias-corrected as torch's (train.optimizer = "adamw"), or mlx-lm's uncorrected ("adamw_mlx")."""
    t = cfg.train
    return optim.AdamW(learning_rate=schedule(cfg, total_steps), weight_decay=t.weight_decay,
                       bias_correction=t.optimizer == "adamw")


def wants_compile(cfg: Config) -> bool:
    """Whether the step (or, layer by layer, each layer) is compiled: train.compile "on" only. Every new batch
    shape costs a trace and its kernels' compilation, and a real dataset's length-bucketed batches bring a new
    shape most steps (H200, the Mac preset on 300 bundled examples: 6 checkpointed steps 106.5 s compiled against
    2.9 s eager, validation 41.0 against 5.2 s; CPUs: seconds per shape and no faster). Fixed shapes
    (benchmarks) gain: bench/results/h200_*."""
    return cfg.train.compile == "on"


def compiles_update(cfg: Config, backend_kind: str) -> bool:
    """Whether the update (all-reduce, clipping, AdamW) outside a compiled step is one compiled function, traced
    once: "auto" on GPUs, where eagerly each adapter array costs ~15 kernel launches (H200, 7B r16 q,v: 29.4 ms
    eager, 3.2 compiled, bench/results/h200_optimizer_update_2026-12-02b.txt; 4-bit 2 x 1,024 checkpointed SFT 0.300 -> 0.272 s
    a step), not on CPUs (the trace's kernels are built with the system's C++ compiler); "on" everywhere."""
    return cfg.train.compile == "on" or (cfg.train.compile == "auto" and backend_kind != "cpu")


def micro_batch_seed(seed: int, micro_batch: int, rank: int = 0, size: int = 1) -> int:
    """The random seed of a micro-batch (dropout noise): a function of its position, so a resume needs no RNG
    state; with several workers each its own (masks differ from one process's: see README)."""
    return (seed * 1_000_003 + micro_batch) * size + rank


@dataclass(frozen=True, eq=False)
class _Compute:
    """The step's arithmetic for one model and optimizer. Kept apart from TrainStep, whose cache holds the
    functions made of it: no reference cycle, so the model and its optimizer are freed with the step."""

    objective: Objective
    model: nn.Module
    optimizer: optim.Optimizer
    group: mx.distributed.Group | None
    stepwise: bool  # core.layerwise
    eager: bool  # not compiled

    def state(self) -> list[Any]:
        return [self.model.state, self.optimizer.state, mx.random.state]

    def step(self, kl_type: type, apply: Callable[[Any], mx.array], seq: tuple[mx.array, ...], desirable: mx.array,
             ref: mx.array, kl: dict[str, Any], weight: mx.array, prev_grad: Any,
             update: bool) -> tuple[mx.array, Any]:
        batch = Batch(seq, desirable, ref, kl_type(**kl))
        (loss, values), grad = self.objective.value_and_grad(self.model, batch, weight, stepwise=self.stepwise,
                                                             eager=self.eager)
        if prev_grad is not None:
            grad = tree_map(lambda x, y: x + y, grad, prev_grad)
        norm = mx.array(0.0)
        if update:
            norm = apply(grad)
            grad = None
        return metrics_row(loss=loss, grad_norm=norm, **values), grad

    def update(self, grad: Any) -> mx.array:
        """Average over the workers and the micro-batches, clip, update the adapters; the gradient norm."""
        t = self.objective.cfg.train
        if self.group is not None and self.group.size() > 1:  # the weights make this average the single-process
            grad = nn.average_gradients(grad, group=self.group)  # gradient of the global batch
        if t.grad_accumulation > 1:
            grad = tree_map(lambda g: g / t.grad_accumulation, grad)
        if t.max_grad_norm > 0:
            grad, norm = optim.clip_grad_norm(grad, t.max_grad_norm)
        else:
            norm = optim.clip_grad_norm(grad, float("inf"))[1]
        self.optimizer.update(self.model, grad)
        return norm


class TrainStep:
    """One micro-batch of training for a model and its optimizer, as the trainer (and core.memory_probe) runs it.

    What the model allows decides how: KTO's KL pairs on the policy forward (core.prefix_kl), and
    train.grad_checkpoint layer by layer (core.layerwise) where it can, else mlx-lm's `grad_checkpoint`.
    """

    def __init__(self, objective: Objective, model: nn.Module, optimizer: optim.Optimizer, compiled: bool,
                 group: mx.distributed.Group | None = None, compile_update: bool = False) -> None:
        t = objective.cfg.train
        self.objective, self.model, self.optimizer = objective, model, optimizer
        self.rank, self.size = (group.rank(), group.size()) if group is not None else (0, 1)
        self.shares_kl = objective.kl_pairs and prefix_kl.supported(model)
        stepwise = t.grad_checkpoint and layerwise.supported(model)
        if t.grad_checkpoint and not stepwise:
            from mlx_lm.tuner.trainer import grad_checkpoint

            grad_checkpoint(model.layers[0])
        self.compiled = compiled and not stepwise  # evaluated layer by layer: each layer's functions compiled
        layerwise.use_compiled(model, compiled and stepwise)
        lean_backward.use(model, lean_backward.wanted(t.lean_backward, backend.detect().kind, t.grad_checkpoint))
        self._compute = _Compute(objective, model, optimizer, group, stepwise, eager=not self.compiled)
        self._update: Callable[[Any], mx.array] = self._compute.update
        if compile_update and not self.compiled:  # (inside a compiled step it is compiled with the step)
            optimizer.init(model.trainable_parameters())  # its state complete before the trace: traced once
            state = self._compute.state()
            self._update = mx.compile(self._compute.update, inputs=state, outputs=state)
        self._fns: dict[type, Callable[..., Any]] = {}

    def evaluating(self) -> AbstractContextManager[Any]:
        """Where validation runs its forwards: one layer per evaluation under layer-by-layer checkpointing
        (core.layerwise.by_layer), so that it never holds more than the step does."""
        return layerwise.by_layer(self.model) if self._compute.stepwise else nullcontext()

    def batch(self, seqs: Sequences, idx: np.ndarray, ref: tuple[np.ndarray, np.ndarray] | None = None,
              shard: bool = True, step_tokens: int = 0) -> Batch:
        """The micro-batch of examples `idx`: packed sequences, labels, reference log-probs (`ref`: of the
        examples and of their KL pairs), KL pairs.

        With several workers (and `shard`), this worker's equal part of the global micro-batch. Its weight
        makes the losses add up to the single-process loss of the optimizer step (times the worker count and
        the accumulation steps, which the step divides out): KTO's example mean over the global micro-batch;
        SFT's token mean over all `step_tokens` completion tokens of the step's micro-batches, as transformers'
        num_items_in_batch (not the mean of per-micro-batch means).
        """
        whole = len(idx)
        if shard and self.size > 1:
            idx = idx[self.rank :: self.size]
        weight = self.objective.weight(seqs, idx, whole, step_tokens) if shard else 1.0
        with_kl = self.objective.kl_pairs and ref is not None and seqs.kl_ids is not None
        kl_ids = [seqs.kl_ids[i] for i in idx] if with_kl else []
        shared = with_kl and self.shares_kl and bool(seqs.kl_shared[idx].all())
        seq = pack([seqs.ids[i] for i in idx], seqs.starts[idx],
                   longest=0 if shared else max(map(len, kl_ids), default=0), trained=seqs.trained_at(idx))
        kl: KLPairs = NoKL()
        if shared:  # the KL pass reuses the prompts' keys/values
            kl = SharedKL(tuple(map(mx.array, prefix_kl.pack(kl_ids, seqs.kl_starts[idx]))), mx.array(ref[1][idx]))
        elif with_kl:
            kl = SeparateKL(tuple(map(mx.array, pack(kl_ids, seqs.kl_starts[idx], longest=seq[0].shape[1],
                                                     k_min=seq[1].shape[1]))), mx.array(ref[1][idx]))
        return Batch(tuple(map(mx.array, seq)), mx.array(seqs.labels[idx]),
                     mx.array(ref[0][idx]) if ref is not None else mx.array(0.0), kl,
                     seqs.trained_tokens(idx), int(sum(len(seqs.ids[i]) for i in idx)), weight)

    def __call__(self, batch: Batch, grad: Any = None, update: bool = True) -> tuple[np.ndarray, Any]:
        """Train on one micro-batch: its metrics row (core.objectives.Metric) and the gradients accumulated on
        `grad` (None after the update that `update` asks for, on the step's last micro-batch). Evaluated."""
        fn = self._fns.get(type(batch.kl)) or self._function(type(batch.kl))
        metrics, grad = fn(batch.seq, batch.desirable, batch.ref, kl_arrays(batch.kl), mx.array(batch.weight),
                           grad, update)
        mx.eval(self._compute.state(), metrics, grad)
        return np.array(metrics), grad

    def _function(self, kl_type: type) -> Callable[..., Any]:
        """The step for batches of this KL variant (a compiled function of arrays only), made on first use."""
        fn = partial(self._compute.step, kl_type, self._update)
        if self.compiled:
            state = self._compute.state()
            fn = mx.compile(fn, inputs=state, outputs=state)
        self._fns[kl_type] = fn
        return fn
