"""The training loop: SFT or KTO on LoRA/DoRA adapters, compiled step, checkpoints, exact resume, events.

Shaped like mlx-lm's `tuner/trainer.py` (a compiled step that includes the optimizer update and
gradient accumulation) with what a long unattended run needs on top: precomputed KTO reference
log-probs, a NaN/inf guard, graceful stop on signals, verified checkpoints and bit-exact resume.
We do not call mlx-lm's `train()` because it cannot carry KTO's extra inputs, checkpoint optimizer
and RNG state, or stop on a signal.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from . import backend, checkpoints, collective, data, layerwise, memory, prefix_kl, runs
from .batching import BatchPlan, Sequences, eval_batches, pack, rotation, tokenize
from .config import Config
from .config import load as load_config
from .fsutil import atomic_dir, atomic_write_bytes
from .losses import hidden_logps, kto_kl, kto_losses_masked, packed_logps, packed_sft_loss
from .model import ADAPTER_CONFIG, ADAPTER_FILE, Loaded, ModelError, load_for_training, write_adapters
from .progress import redirect
from .reference import Stopped as ReferenceStopped
from .reference import model_files, model_identity, reference_pass

Progress = Callable[[dict[str, Any]], None]
HANGUP_MESSAGE = ("terminal closed (SIGHUP): training continues, its output goes to train.log; follow it with "
                  "`tunedeck runs` or the app, stop it with `tunedeck stop RUN_DIR`")
# metrics vector returned by the step: loss, trained tokens, Σ chosen rewards, #chosen, Σ rejected
# rewards, #rejected, kl, Σ chosen logps, Σ rejected logps, grad norm
N_METRICS = 10


class InputError(Exception):
    """The data or model cannot be trained on as configured; the message says why (no traceback)."""


class WriteError(Exception):
    """A checkpoint or adapter file could not be written (disk full, I/O error); names the file."""


@dataclass
class Batch:
    arrays: tuple[mx.array, ...]
    tokens: int  # trained (completion) tokens
    seq_tokens: int  # non-padding tokens
    weight: float = 1.0  # data parallel: this worker's share of the micro-batch's loss, times the worker count


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


def _ckpt_pause(name: str) -> None:
    """Test-only (TUNEDECK_FAULT=ckpt_pause:SECONDS): announce a checkpoint step in train.log, then sleep."""
    if pause := float(fault("ckpt_pause") or 0):
        print(f"ckpt-wrote {name}", flush=True)
        time.sleep(pause)


def fault(name: str) -> str | None:
    """Test-only fault injection, read from TUNEDECK_FAULT (e.g. "nan_loss:5", "ckpt_pause:0.2")."""
    for item in os.environ.get("TUNEDECK_FAULT", "").split(","):
        key, _, value = item.partition(":")
        if key == name:
            return value
    return None


class Trainer:
    def __init__(self, run_dir: Path, resume: bool = False, progress: Progress | None = None) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress
        self.cfg, _ = load_config(run_dir / "config.toml")
        self.world = collective.init_group()
        self.rank, self.size = self.world.rank(), self.world.size()
        self.events: runs.EventWriter | None = None
        self.stop_signal: int | None = None
        self.hung_up = False  # SIGHUP: the terminal is gone; training goes on (see _on_hangup)
        self._hangup_pending = False  # its warning is written by the next emit, not inside the handler
        self._terminal: list[TextIO] = []  # standard streams that were a terminal at the start
        self.step = 0
        self.share_kl_prefix = self.layerwise = False  # set by _setup_step once the model is loaded

    # --- lifecycle ---------------------------------------------------------------------------

    def emit(self, type: str, **fields: Any) -> None:
        self._note_hangup()
        if self.events is not None:
            event = self.events.emit(type, self.step, **fields)
            if self.progress:
                self.progress(event)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is not None:
            os._exit(128 + signum)  # second signal: exit at once
        self.stop_signal = signum
        # Python runs handlers only between bytecodes, so a second signal during a long MLX call (a big
        # model's step) would wait for it: from now on the default action applies and ends the process at once
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)

    def _note_hangup(self) -> None:
        """The `warning` event for a SIGHUP that arrived since the last event."""
        if self._hangup_pending:
            self._hangup_pending = False
            self.emit("warning", signal="SIGHUP", message=HANGUP_MESSAGE)

    def _on_hangup(self, _signum: int, _frame: Any) -> None:
        """SIGHUP (SSH link dropped, terminal closed): keep training. The progress display stops, and what the
        process would write to the dead terminal goes to train.log; a `warning` event tells those following."""
        if self.hung_up:
            return
        self.hung_up = True
        self.progress = None
        self._hangup_pending = True
        with contextlib.suppress(OSError):
            for stream in self._terminal:
                redirect(stream, self.run_dir / "train.log")

    def run(self) -> int:
        """Train to completion, stop, or failure. Returns the process exit status."""
        lock = runs.RunLock(self.run_dir) if self.rank == 0 else None
        try:
            if lock:
                runs.check_writable(self.run_dir)
                lock.acquire()
                self.events = runs.EventWriter(self.run_dir, check=lock.check)  # notices a removed/replaced lock
                if lock.took_over_from:
                    self.emit("warning", message=f"took over the lock of a dead trainer (pid {lock.took_over_from})")
        except (runs.RunError, OSError) as e:
            print(f"tunedeck: error: {e}", file=sys.stderr, flush=True)
            return 1
        self._terminal = [s for s in (sys.stdout, sys.stderr) if _is_terminal(s)]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            return self._train()
        except (data.DataError, ModelError, InputError) as e:  # the user's data or model: the message says it all
            return self._fail(str(e), "input")
        except WriteError as e:
            return self._fail(str(e), "io")
        except Exception as e:  # the run is marked failed with the reason; the traceback goes to train.log
            traceback.print_exc()
            hint = " (another worker stopped first: see train.log)" if self.size > 1 and "peer" in str(e) else ""
            return self._fail(f"{type(e).__name__}: {e}{hint}", "exception")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.events:
                self.events.close()
            if lock:
                lock.release()

    def _fail(self, message: str, kind: str) -> int:
        """Mark the run failed with an error event (or, if even that cannot be written, say so on stderr)."""
        try:
            self.emit("error", message=message, kind=kind)
        except OSError as e:
            print(f"tunedeck: error: {message}\n(and the error event could not be written: {e})",
                  file=sys.stderr, flush=True)
        return 1

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write (OSError, or MLX's RuntimeError) into a WriteError naming the run file."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            with contextlib.suppress(OSError):
                reason += f" ({shutil.disk_usage(self.run_dir).free / 2**20:.0f} MB free on that disk)"
            raise WriteError(f"cannot write {what} in {self.run_dir}: {reason}. Earlier checkpoints are intact; "
                             "free space and continue with `tunedeck train --resume RUN_DIR`") from e

    # --- setup -------------------------------------------------------------------------------

    def _warn_if_inputs_changed(self, inputs: dict[str, Any]) -> None:
        """On resume: a warning if the dataset or the model's weight files differ from the run's first start."""
        first = next((e for e in runs.read_events(self.run_dir) if e.get("type") == "start"), None)
        if first is None:
            return
        if first.get("data_sha256") not in (None, inputs["data_sha256"]):
            self.emit("warning", message=f"the dataset {self.cfg.data.path} changed since this run started (sha256 "
                                         f"{str(first['data_sha256'])[:12]}… → {inputs['data_sha256'][:12]}…): the "
                                         "split and the batches follow the new file, so this resume is not exact")
        if first.get("model_files") not in (None, inputs["model_files"]):
            self.emit("warning", message=f"the base model's weight files changed since this run started "
                                         f"({self.cfg.model.path}): the checkpoints were trained on other weights")

    def _load_data(self) -> tuple[list[data.Example], list[data.Example]]:
        c = self.cfg
        ds = data.load(c.data.path, None if c.data.format == "auto" else c.data.format, strict=c.data.strict,
                       tools=c.data.tools or None)
        self.data_sha256 = ds.sha256
        if ds.skipped:
            self.emit("warning", message=f"{ds.skipped} bad line(s) in {c.data.path} set aside (data.strict = false)")
        train, valid = data.split(ds.examples, c.data.valid_fraction, c.train.seed)
        if c.train.method == "sft":
            dropped = sum(1 for e in train if not e.label)
            if dropped:
                self.emit("warning", message=f"SFT trains on desirable examples only: {dropped} undesirable set aside")
            train = [e for e in train if e.label]
            valid = [e for e in valid if e.label]
        else:
            nd = sum(e.label for e in train)
            if msg := data.check_kto_weights(nd, len(train) - nd, c.kto.desirable_weight, c.kto.undesirable_weight):
                self.emit("warning", message=msg)
        if msg := trainable_problem(c, train):
            raise InputError(msg)
        return train, valid

    def _setup_step(self, model: nn.Module) -> None:
        """What the step can do with this model: KTO's KL pairs on the policy forward (core.prefix_kl), and
        train.grad_checkpoint layer by layer (core.layerwise) where the model allows, else mlx-lm's."""
        c = self.cfg
        self.share_kl_prefix = c.train.method == "kto" and c.kto.loss_type == "kto" and prefix_kl.supported(model)
        self.layerwise = self.cfg.train.grad_checkpoint and layerwise.supported(model)
        if self.layerwise:  # evaluated layer by layer: no whole-step compile
            self.compiled = False
        elif self.cfg.train.grad_checkpoint:
            from mlx_lm.tuner.trainer import grad_checkpoint

            grad_checkpoint(model.layers[0])

    def _plan(self, seqs: Sequences) -> BatchPlan:
        """The data order; with kto.kl_pairs = "batch" the same micro-batches every epoch (their KL pairs are
        fixed, so the reference log-probs are computed once), in a new order each epoch."""
        c, kto = self.cfg, self.cfg.train.method == "kto"
        return BatchPlan(seqs.lengths, seqs.labels if kto else None, c.train.batch_size, c.train.seed,
                         fixed=kto and c.kto.kl_pairs == "batch")

    def _plan_pairing(self, seqs: Sequences) -> np.ndarray:
        """kto.kl_pairs = "batch" for the training split: TRL's rotation inside each micro-batch of the plan."""
        return rotation(self._plan(seqs).batches(), len(seqs), self.cfg.train.seed)

    def _eval_pairing(self, seqs: Sequences) -> np.ndarray:
        """The same for the validation split, inside the evaluation batches (`_evaluate`)."""
        c = self.cfg
        return rotation(eval_batches(seqs.lengths, c.train.batch_size, c.train.eval_batches), len(seqs),
                        c.train.seed + 1)

    def _optimizer(self, total_steps: int) -> optim.Optimizer:
        """AdamW: bias-corrected as torch's (train.optimizer = "adamw"), or mlx-lm's uncorrected ("adamw_mlx")."""
        t = self.cfg.train
        return optim.AdamW(learning_rate=schedule(self.cfg, total_steps), weight_decay=t.weight_decay,
                           bias_correction=t.optimizer == "adamw")

    def _total_steps(self, plan: BatchPlan) -> int:
        t = self.cfg.train
        if t.epochs > 0:
            return max(1, math.ceil(t.epochs * plan.batches_per_epoch / t.grad_accumulation))
        return t.iters

    # --- the step ----------------------------------------------------------------------------

    def _make_step(self, model: nn.Module, optimizer: optim.Optimizer) -> Callable[..., Any]:
        c, kto = self.cfg, self.cfg.train.method == "kto"
        ga, clip, size = c.train.grad_accumulation, c.train.max_grad_norm, self.size
        poison_grads = fault("nan_grad") is not None  # test-only: NaN into the gradients, not the loss

        def kl_baseline(policy_kl, ref_kl):
            if size > 1:  # as TRL across processes: each worker's batch mean, averaged, then clamped at 0
                kl = mx.stop_gradient(mx.mean(policy_kl - ref_kl))
                return mx.maximum(mx.distributed.all_sum(kl, group=self.world) / size, 0.0)
            return kto_kl(policy_kl, ref_kl)

        def objective(logps, seq, desirable, ref, kl, poison, weight):
            """(loss, aux) from the summed completion log-probs [B] of the batch's sequences."""
            if not kto:
                ntoks = seq[3].sum()
                loss = -logps.sum() / mx.maximum(ntoks, 1)
                zero = mx.array(0.0)
                loss = (loss if poison_grads else loss * poison) * weight
                return loss, mx.stack([ntoks, zero, zero, zero, zero, zero, zero, zero])
            losses, rewards = kto_losses_masked(
                logps, ref, desirable, kl, c.kto.beta, c.kto.desirable_weight, c.kto.undesirable_weight, c.kto.loss_type
            )
            d = desirable.astype(mx.float32)
            u = 1 - d
            lp = mx.stop_gradient(logps)
            aux = mx.stack([seq[3].sum(), (rewards * d).sum(), d.sum(), (rewards * u).sum(), u.sum(),
                            (lp * d).sum(), (lp * u).sum(), kl])
            return (losses.mean() if poison_grads else losses.mean() * poison) * weight, aux

        def loss_fn(model, seq, desirable, ref, kl, poison, weight, shared_kl, ref_kl):
            if shared_kl:  # the KL pairs ride on this forward's prompt keys/values (core.prefix_kl)
                logps, policy_kl = prefix_kl.policy_and_kl_logps(model, seq, shared_kl)
                kl = kl_baseline(policy_kl, ref_kl)
            else:
                logps = packed_logps(model, *seq)
            return objective(logps, seq, desirable, ref, kl, poison, weight)

        def layerwise_loss(model, seq, desirable, ref, kl, poison, weight, shared_kl, ref_kl):
            """loss_fn's value and gradients through core.layerwise (gradient checkpointing, bounded memory)."""
            tokens, positions, targets, mask = seq
            recorded = prefix_kl.recorders(model) if shared_kl else None
            found = {"kl": kl}

            def kl_pass(hidden):  # between the forward and the loss, one layer at a time as well
                first = mx.take_along_axis(hidden, positions[:, :1, None], axis=1)
                found["kl"] = kl_baseline(prefix_kl.kl_logps(model, recorded, first, shared_kl, stepwise=True), ref_kl)
                mx.eval(found["kl"])
                recorded.clear()  # the prompt keys/values are not needed any more

            def on_hidden(hidden):
                return objective(hidden_logps(model, hidden, positions, targets, mask).sum(axis=-1), seq, desirable,
                                 ref, found["kl"], poison, weight)

            return layerwise.value_and_grad(model, tokens[:, :-1], on_hidden, recorded, kl_pass if shared_kl else None)

        value_and_grad = partial(layerwise_loss if self.layerwise else nn.value_and_grad(model, loss_fn), model)

        def step(seq, desirable, ref, kl_seq, ref_kl, poison, weight, prev_grad, do_update):
            shared_kl = kl_seq if kto and c.kto.loss_type == "kto" and len(kl_seq) == 5 else ()
            if kto and c.kto.loss_type == "kto" and not shared_kl:  # a separate forward over the KL pairs
                kl_logps = layerwise.sequence_logps if self.layerwise else packed_logps
                kl = kl_baseline(kl_logps(model, *kl_seq), ref_kl)
                if not self.compiled:
                    # eager: finish the KL forward before the policy's forward/backward (measured on CPU:
                    # KTO step 1.9x -> 1.5x the gradient step alone, and the KL activations are freed first)
                    mx.eval(kl)
            else:
                kl = mx.array(0.0)
            (loss, aux), grad = value_and_grad(seq, desirable, ref, kl, poison, weight, shared_kl, ref_kl)
            if poison_grads:
                grad = tree_map(lambda g: g * poison, grad)
            if prev_grad is not None:
                grad = tree_map(lambda x, y: x + y, grad, prev_grad)
            norm = mx.array(0.0)
            if do_update:
                if size > 1:  # the weights make this average the single-process gradient of the global batch
                    grad = nn.average_gradients(grad, group=self.world)
                if ga > 1:
                    grad = tree_map(lambda g: g / ga, grad)
                if clip > 0:
                    grad, norm = optim.clip_grad_norm(grad, clip)
                else:
                    norm = optim.clip_grad_norm(grad, float("inf"))[1]
                optimizer.update(model, grad)
                grad = None
            metrics = mx.concatenate([loss[None], aux[:1], aux[1:5], aux[7:8], aux[5:7], norm[None]])
            return metrics, grad

        if not self.compiled:
            return step
        state = [model.state, optimizer.state, mx.random.state]
        return partial(mx.compile, inputs=state, outputs=state)(step)

    def _batch(self, seqs: Sequences, idx: np.ndarray, ref: np.ndarray | None, ref_kl: np.ndarray | None,
               shard: bool = True, step_tokens: int = 0) -> Batch:
        """Arrays for one micro-batch: packed sequences, labels, reference log-probs, KL pairs (KTO).

        With several workers (and `shard`), this worker's equal part of the global micro-batch. The weight
        makes the losses add up to the single-process loss of the optimizer step (times the worker count and
        the accumulation steps, which the step divides out): KTO's example mean over the global micro-batch;
        SFT's token mean over all `step_tokens` completion tokens of the step's micro-batches, as transformers'
        num_items_in_batch (not the mean of per-micro-batch means).
        """
        weight = 1.0
        if shard and self.size > 1:
            whole, idx = idx, idx[self.rank :: self.size]
            if self.cfg.train.method == "kto":
                weight = self.size * len(idx) / len(whole)
        if step_tokens and self.cfg.train.method == "sft":
            weight = self.size * self.cfg.train.grad_accumulation * _loss_tokens(seqs, idx) / step_tokens
        with_kl = ref_kl is not None and seqs.kl_ids is not None
        kl_ids = [seqs.kl_ids[i] for i in idx] if with_kl else []
        shared = with_kl and self.share_kl_prefix and bool(seqs.kl_shared[idx].all())
        seq = pack([seqs.ids[i] for i in idx], seqs.starts[idx],
                   longest=0 if shared else max(map(len, kl_ids), default=0), trained=seqs.trained_at(idx))
        zero = mx.array(0.0)
        kl_seq: tuple[mx.array, ...] = (zero, zero, zero, zero)
        if shared:  # five arrays: the KL pass reuses the prompts' keys/values (core.prefix_kl)
            kl_seq = tuple(map(mx.array, prefix_kl.pack(kl_ids, seqs.kl_starts[idx])))
        elif with_kl:
            kl_seq = tuple(map(mx.array, pack(kl_ids, seqs.kl_starts[idx], longest=seq[0].shape[1],
                                              k_min=seq[1].shape[1])))
        arrays = (tuple(map(mx.array, seq)), mx.array(seqs.labels[idx]),
                  mx.array(ref[idx]) if ref is not None else zero, kl_seq,
                  mx.array(ref_kl[idx]) if with_kl else zero)
        return Batch(arrays, seqs.trained_tokens(idx), int(sum(len(seqs.ids[i]) for i in idx)), weight)

    def _sum(self, values: Any) -> np.ndarray:
        """Element-wise float64 sum of a host vector over the workers (the vector itself with one worker)."""
        return collective.host_sum(np.asarray(values, dtype=np.float64), self.world)

    def _sync_from_rank0(self, model: nn.Module, optimizer: optim.Optimizer, restored: bool) -> None:
        """Every worker starts from rank 0's adapter, step and (on resume) optimizer state: rank 0 alone picks
        and reads the checkpoint, so the others need not see the run directory's checkpoints at all."""
        step, restored_any = self._sum([self.step, restored] if self.rank == 0 else [0, 0])
        self.step = int(step)

        def broadcast(tree: Any) -> list[tuple[str, mx.array]]:  # all_sum with zeros from all but rank 0: exact
            # sorted: a tree loaded from a checkpoint and one made by optimizer.init list their keys differently
            return [(k, collective.broadcast(v, self.world)) for k, v in sorted(tree_flatten(tree))]

        model.load_weights(broadcast(model.trainable_parameters()), strict=False)
        if restored_any:
            if self.rank != 0:
                optimizer.init(model.trainable_parameters())
            optimizer.state = tree_unflatten(broadcast(optimizer.state))
        mx.eval(model.parameters(), optimizer.state)

    # --- evaluation --------------------------------------------------------------------------

    def _evaluate(self, model: nn.Module, seqs: Sequences, ref: Any) -> dict[str, float]:
        c = self.cfg
        if len(seqs) == 0:
            return {}
        was_training = model.training
        model.eval()
        total = ntoks = 0.0
        rsum = np.zeros(4)  # Σ chosen rewards, #chosen, Σ rejected rewards, #rejected
        batches = eval_batches(seqs.lengths, c.train.batch_size, c.train.eval_batches)
        # several workers: each takes whole batches (every size-th), so KTO's z of a batch is as in one process
        for idx in batches[self.rank :: self.size]:
            seq, desirable, r, kl_seq, r_kl = self._batch(seqs, idx, ref[0] if ref else None,
                                                          ref[1] if ref else None, shard=False).arrays
            if c.train.method == "sft":
                loss, n = packed_sft_loss(model, *seq)
                mx.eval(loss, n)
                total += loss.item() * n.item()
                ntoks += n.item()
                continue
            kl = mx.array(0.0)
            if len(kl_seq) == 5:
                logps, policy_kl = prefix_kl.policy_and_kl_logps(model, seq, kl_seq)
                kl = kto_kl(policy_kl, r_kl)
            else:
                logps = packed_logps(model, *seq)
                if c.kto.loss_type == "kto":
                    kl = kto_kl(packed_logps(model, *kl_seq), r_kl)
            losses, rw = kto_losses_masked(logps, r, desirable, kl, c.kto.beta,
                                           c.kto.desirable_weight, c.kto.undesirable_weight, c.kto.loss_type)
            mx.eval(losses, rw)
            total += losses.sum().item()
            ntoks += len(idx)
            rw_np, d_np = np.array(rw, dtype=np.float64), np.array(desirable, dtype=bool)
            rsum += [rw_np[d_np].sum(), d_np.sum(), rw_np[~d_np].sum(), (~d_np).sum()]
        model.train(was_training)
        total, ntoks, *rest = self._sum([total, ntoks, *rsum])
        out = {"val_loss": total / max(ntoks, 1)}
        if c.train.method == "kto":
            rc = float(rest[0] / rest[1]) if rest[1] else float("nan")
            rr = float(rest[2] / rest[3]) if rest[3] else float("nan")
            out.update(val_rewards_chosen=rc, val_rewards_rejected=rr, val_margin=rc - rr)
        return out

    # --- checkpoints -------------------------------------------------------------------------

    def _save_checkpoint(self, model: nn.Module, optimizer: optim.Optimizer, adapter_cfg: dict[str, Any]) -> Path:
        final = self.run_dir / "checkpoints" / runs.checkpoint_name(self.step)
        state = {"step": self.step, "micro_batch": self.step * self.cfg.train.grad_accumulation,
                 "time": time.time(), "method": self.cfg.train.method}
        where = f"checkpoints/{final.name}"
        with self._writing(where), atomic_dir(final) as tmp:
            with self._writing(f"{where}/{ADAPTER_FILE}"):
                write_adapters(model, adapter_cfg, tmp)
            _ckpt_pause(ADAPTER_FILE)
            with self._writing(f"{where}/optimizer.safetensors"):
                mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
            _ckpt_pause("optimizer.safetensors")
            with self._writing(f"{where}/state.json"):
                (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            _ckpt_pause("state.json")
            with self._writing(f"{where}/manifest.json"):
                runs.write_manifest(tmp)
            _ckpt_pause("manifest.json")
        _ckpt_pause(f"renamed {final.name}")  # renamed into place, `latest` not yet updated
        with self._writing("checkpoints/latest"):
            runs.mark_latest(self.run_dir, final)
        _ckpt_pause("latest")
        self._publish_adapters(final)
        return final

    def _publish_adapters(self, ckpt: Path, announce: Callable[[str], None] = _ckpt_pause) -> None:
        """Refresh runs/<id>/adapters/ (each file replaced atomically) from a verified checkpoint's files."""
        dest = self.run_dir / "adapters"
        # the config first: a publish cut short leaves a config without weights (readers fall back to the
        # newest checkpoint), never weights without the config that mlx_lm.load needs
        for name in (ADAPTER_CONFIG, ADAPTER_FILE):
            with self._writing(f"adapters/{name}"):
                dest.mkdir(exist_ok=True)
                atomic_write_bytes(dest / name, (ckpt / name).read_bytes())
            announce(f"adapters/{name}")

    def _prune(self, ckpt: Path) -> dict[str, Any]:
        """train.keep_checkpoints: once `ckpt` verifies on disk, delete the oldest beyond the newest N.
        Returns the checkpoint event's extra field (the names deleted), if any."""
        keep = self.cfg.train.keep_checkpoints
        if not keep:
            return {}
        if why := checkpoints.resume_problem(ckpt):
            self.emit("warning", message=f"checkpoints/{ckpt.name} does not verify after writing ({why}); "
                                         "older checkpoints are kept")
            return {}
        try:
            pruned = checkpoints.prune(self.run_dir, ckpt, keep)
        except OSError as e:
            self.emit("warning", message=f"cannot delete old checkpoints (train.keep_checkpoints = {keep}): {e}")
            return {}
        return {"pruned": pruned} if pruned else {}

    def _resume_point(self) -> Path | None:
        """The newest resumable checkpoint; damaged newer ones are moved aside (each named in a warning), so
        that this run can write their steps again."""
        with self._writing("checkpoints"):
            ckpt, aside = checkpoints.resume_point(self.run_dir)
        then = f"resuming from checkpoints/{ckpt.name}" if ckpt else "no verified checkpoint is left: training starts at step 0"
        for a in aside:
            self.emit("warning", message=f"checkpoints/{a.name} is damaged ({a.why}): moved aside to "
                                         f"checkpoints/{a.moved_to}; {then}")
        return ckpt

    def _repair_adapters(self, ckpt: Path) -> None:
        """Republish runs/<id>/adapters/ from the resume checkpoint where its files are missing or differ
        (damaged, or left from an earlier checkpoint by a kill during the publish)."""
        if stale := checkpoints.stale_adapters(self.run_dir, ckpt):
            self.emit("warning", message=f"adapters/{' and adapters/'.join(stale)} did not match "
                                         f"checkpoints/{ckpt.name} (damaged, or older): republished from it")
            self._publish_adapters(ckpt, announce=lambda _: None)

    @contextlib.contextmanager
    def _reading(self, ckpt: Path, name: str) -> Iterator[None]:
        """Turn a failed read of a checkpoint file into an InputError naming it."""
        try:
            yield
        except (OSError, ValueError, RuntimeError, KeyError, checkpoints.CheckpointError) as e:
            raise InputError(f"cannot resume from {ckpt / name}: {e}. It matches its manifest, so it was written "
                             f"this way; move {ckpt.name} out of {ckpt.parent} to resume from an earlier "
                             "checkpoint") from None

    def _restore(self, ckpt: Path, model: nn.Module, optimizer: optim.Optimizer) -> None:
        """Adapter weights, optimizer state and step from a checkpoint that passed checkpoints.resume_problem."""
        with self._reading(ckpt, ADAPTER_FILE):
            model.load_weights(list(mx.load(str(ckpt / ADAPTER_FILE)).items()), strict=False)
            mx.eval(model.parameters())
        optimizer.init(model.trainable_parameters())
        with self._reading(ckpt, checkpoints.OPTIMIZER):
            optimizer.state = tree_unflatten(list(mx.load(str(ckpt / checkpoints.OPTIMIZER)).items()))
            mx.eval(optimizer.state)
        with self._reading(ckpt, checkpoints.STATE):
            self.step = checkpoints.read_step(ckpt)

    # --- the KTO reference pass ---------------------------------------------------------------

    def _report_reference(self, done: int, total: int, rate: float, eta: float) -> None:
        """A `reference` event: sequences done of this process's total, their rate, the ETA, the memory."""
        self.emit("reference", done=done, total=total, rate=round(rate, 2), eta_s=round(eta, 1),
                  workers=self.size, **memory.readings())

    def _reference_between(self) -> Callable[[], bool]:
        """What the reference pass asks after each batch: stop now? (a signal arrived)."""
        pause = float(fault("ref_sleep") or 0)  # test-only: slow the pass down to hit it with signals

        def between() -> bool:
            if pause:
                time.sleep(pause)
            return self.stop_signal is not None

        return between

    # --- main loop ---------------------------------------------------------------------------

    def _train(self) -> int:
        c = self.cfg
        kto = c.train.method == "kto"
        be = backend.detect()
        dtype = backend.dtype_for(be, c.model.dtype)
        # On CPUs compiling costs seconds per new batch shape and runs no faster (measured: bench/).
        self.compiled = c.train.compile == "on" or (c.train.compile == "auto" and be.kind != "cpu")
        mx.random.seed(c.train.seed)
        ckpt = None
        if c.train.batch_size % self.size:
            raise InputError(f"train.batch_size ({c.train.batch_size}) must be a multiple of the number of workers "
                             f"({self.size}): each worker takes an equal share of every batch")
        if self.resume and self.rank == 0:  # rank 0 alone reads the checkpoints; _sync_from_rank0 shares them
            for p in runs.clean_leftovers(self.run_dir):
                self.emit("warning", message=f"removed a half-written leftover: {p.name}")
            ckpt = self._resume_point()

        train_ex, valid_ex = self._load_data()
        loaded: Loaded = load_for_training(c.model, c.lora, dtype, c.train.seed)
        model, tok = loaded.model, loaded.tokenizer
        inputs = {"data_sha256": self.data_sha256, "model_files": model_files(loaded.model_dir)}
        if ckpt is not None:
            self._warn_if_inputs_changed(inputs)
        batch_pairs = kto and c.kto.kl_pairs == "batch"
        sf = c.data.string_format
        train = tokenize(tok, train_ex, c.data.max_seq_len, kto, c.train.seed, string_format=sf,
                         pairing=self._plan_pairing if batch_pairs else None, train_on=c.data.train_on)
        valid = tokenize(tok, valid_ex, c.data.max_seq_len, kto, c.train.seed + 1, string_format=sf,
                         pairing=self._eval_pairing if batch_pairs else None, train_on=c.data.train_on)
        if train.truncated:
            self.emit("warning", message=f"{train.truncated} training example(s) exceed data.max_seq_len "
                                         f"({c.data.max_seq_len}); their prompts were cut from the left")
        plan = self._plan(train)
        total = self._total_steps(plan)

        ref = ref_valid = None
        ref_info: dict[str, Any] = {}
        if kto:
            t0 = time.perf_counter()
            ident = model_identity(loaded.model_dir, dtype, c.model.quantize, c.model.adapter)
            try:
                done, hit = reference_pass(
                    model, {"train": train, "valid": valid}, c.train.batch_size * 2, self.run_dir, ident,
                    group=self.world, report=self._report_reference, between=self._reference_between(),
                    warn=lambda message: self.emit("warning", message=message))
            except ReferenceStopped:  # nothing to checkpoint before step 1; a resume recomputes the pass
                self.emit("stopped", signal=_signal_name(self.stop_signal or 0), phase="reference",
                          checkpoint=str(ckpt.relative_to(self.run_dir)) if ckpt else None)
                return 0
            ref, ref_valid = done["train"], done["valid"]
            ref_info = {"reference_cached": hit, "reference_seconds": round(time.perf_counter() - t0, 2)}

        self._setup_step(model)
        optimizer = self._optimizer(total)
        if ckpt is not None:
            self._restore(ckpt, model, optimizer)
            self._repair_adapters(ckpt)
        if self.size > 1:
            self._sync_from_rank0(model, optimizer, ckpt is not None)
        # KTO trains with dropout off, as TRL does (disable_dropout=True): the policy/reference log-ratio
        # must be 0 at step 0; lora.dropout applies to SFT. With gradient checkpointing the recomputed
        # forward would draw fresh dropout masks (gradients off by 80% in a test at p=0.3), so it is off too.
        dropout = not kto and c.lora.dropout > 0
        if dropout and c.train.grad_checkpoint:
            dropout = False
            self.emit("warning", message="lora.dropout is not applied with train.grad_checkpoint = true: the "
                                         "recomputed forward pass would draw different dropout masks")
        model.train(dropout)

        self.emit(
            "start", method=c.train.method, total_steps=total, resumed_from=ckpt.name if ckpt else None,
            trainable_params=loaded.trainable, total_params=loaded.total, train_examples=len(train),
            valid_examples=len(valid), desirable=int(train.labels.sum()), undesirable=int((~train.labels).sum()),
            batches_per_epoch=plan.batches_per_epoch, backend=be.kind, dtype=dtype, note=be.note,
            model=c.model.path, workers=self.size, learning_rate=c.learning_rate, pid=os.getpid(), **ref_info,
            **inputs,
        )
        if self.step == 0 and len(valid) and c.train.eval_every:
            self.emit("eval", **self._evaluate(model, valid, ref_valid))

        step_fn = self._make_step(model, optimizer)
        state = [model.state, optimizer.state, mx.random.state]
        ga = c.train.grad_accumulation
        # test-only: poison the loss (or, for nan_grad, the gradients) of step K with NaN or inf
        poison_at = {int(v): float("inf") if k == "inf_loss" else float("nan")
                     for k in ("nan_loss", "nan_grad", "inf_loss") if (v := fault(k)) is not None}
        step_sleep = float(fault("step_sleep") or 0)  # test-only: slow steps down to hit them with signals
        last_ckpt = ckpt
        t_start = time.perf_counter()
        steps_done = 0
        while self.step < total:
            t0 = time.perf_counter()
            grad = None
            acc = np.zeros(N_METRICS)
            tokens = seq_tokens = 0
            step_tokens = 0 if kto else _step_tokens(train, plan, self.step, ga)
            for j in range(ga):
                m = self.step * ga + j
                mx.random.seed(c.train.seed * 1_000_003 + m)  # dropout noise is a function of the position: resume needs no RNG state
                if self.size > 1:  # each worker its own dropout noise (masks differ from one process's: see README)
                    mx.random.seed((c.train.seed * 1_000_003 + m) * self.size + self.rank)
                b = self._batch(train, plan.indices(m), ref[0] if ref else None, ref[1] if ref else None,
                                step_tokens=step_tokens)
                poison = mx.array(poison_at.get(self.step + 1, 1.0))
                metrics, grad = step_fn(*b.arrays, poison, mx.array(b.weight), grad, j == ga - 1)
                mx.eval(state, metrics, grad)
                acc += np.array(metrics)
                tokens += b.tokens
                seq_tokens += b.seq_tokens
            self.step += 1
            steps_done += 1
            self._note_hangup()
            if step_sleep:
                time.sleep(step_sleep)
            stop_sum = 0
            if self.size > 1:  # one all_sum a step: metrics, token counts, and any worker's stop signal
                summed = self._sum([*acc, tokens, seq_tokens, self.stop_signal or 0])
                acc = summed[:N_METRICS]
                acc[[0, 6, 9]] /= self.size  # loss shares are pre-scaled by the worker count; kl, norm are equal
                tokens, seq_tokens, stop_sum = int(summed[-3]), int(summed[-2]), int(summed[-1])
            loss, norm = acc[0] / ga, acc[9]
            if not (math.isfinite(loss) and math.isfinite(norm)):
                what = f"loss ({loss})" if not math.isfinite(loss) else f"gradient norm ({norm})"
                self.emit("error", kind="nan", message=(
                    f"non-finite {what} at step {self.step}; stopped without saving. Likely causes: a learning "
                    f"rate too high (now {c.learning_rate:g}), float16 overflow (use bfloat16/float32), or a bad "
                    f"batch in the data. Last good checkpoint: {last_ckpt.name if last_ckpt else 'none'}"))
                return 1
            dt = time.perf_counter() - t0
            if self.step % c.train.report_every == 0 or self.step == total:
                elapsed = time.perf_counter() - t_start
                fields: dict[str, Any] = dict(
                    loss=loss, lr=float(optimizer.learning_rate.item()), tokens=tokens,
                    tokens_per_sec=round(tokens / dt, 1), seq_tokens_per_sec=round(seq_tokens / dt, 1),
                    tokens_per_sec_per_worker=round(tokens / dt / self.size, 1),
                    step_time=round(dt, 4), grad_norm=float(norm), total_steps=total,
                    eta_sec=round(elapsed / steps_done * (total - self.step), 1), **memory.readings(),
                )
                if kto:
                    nc, nr = acc[3], acc[5]
                    rc = acc[2] / nc if nc else float("nan")
                    rr = acc[4] / nr if nr else float("nan")
                    fields.update(rewards_chosen=rc, rewards_rejected=rr, margin=rc - rr, kl=acc[6] / ga,
                                  logps_chosen=acc[7] / nc if nc else float("nan"),
                                  logps_rejected=acc[8] / nr if nr else float("nan"))
                self.emit("step", **fields)
            # every worker decides from the same all-summed flag, so all stop after the same step
            stopping = stop_sum > 0 if self.size > 1 else self.stop_signal is not None
            if self.step % c.train.eval_every == 0 or self.step == total:
                if len(valid):
                    self.emit("eval", **self._evaluate(model, valid, ref_valid))
            if self.rank == 0 and (self.step % c.train.save_every == 0 or self.step == total or stopping):
                last_ckpt = self._save_checkpoint(model, optimizer, loaded.adapter_config)
                self.emit("checkpoint", path=str(last_ckpt.relative_to(self.run_dir)), **self._prune(last_ckpt))
            if stopping:
                self.emit("stopped", signal=_signal_name(self.stop_signal or stop_sum),
                          checkpoint=str(last_ckpt.relative_to(self.run_dir)) if last_ckpt else None)
                return 0
        self.emit("done", adapters="adapters", checkpoint=str(last_ckpt.relative_to(self.run_dir)) if last_ckpt else None,
                  seconds=round(time.perf_counter() - t_start, 2))
        return 0


def prepare_run(cfg: Config, config_path: Path | None, runs_root: Path, run_dir: Path | None = None) -> Path:
    """Create a run directory with the frozen config (data.path made absolute). The directory is locked
    before anything is written into it: a live trainer's, or one already holding a run, is refused unchanged."""
    from .config import save

    base = config_path.parent if config_path else Path.cwd()
    data_path = Path(cfg.data.path).expanduser()
    if not data_path.is_absolute():
        data_path = (base / data_path).resolve()
    cfg.data.path = str(data_path)
    if cfg.model.adapter and not Path(cfg.model.adapter).is_absolute():
        cfg.model.adapter = str((base / cfg.model.adapter).resolve())
    model_path = Path(cfg.model.path).expanduser()
    if cfg.model.path != "demo" and not model_path.is_absolute() and (base / model_path).exists():
        cfg.model.path = str((base / model_path).resolve())
    if run_dir is None:
        run_dir = runs.new_run_dir(runs_root, cfg.train.method)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    runs.check_writable(run_dir)
    lock = runs.RunLock(run_dir)
    lock.acquire()  # a concurrent `train --run-dir` on the same directory waits here, then finds our config
    try:
        if runs.holds_run(run_dir):
            raise runs.RunError(f"{run_dir} already holds a run; use --resume to continue it")
        save(cfg, run_dir / "config.toml")
    finally:
        lock.release()
    return run_dir


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _signal_name(signum: int) -> str:
    """SIGTERM for a signal another worker received (a sum of several signal numbers names none)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "SIGTERM"


def _loss_tokens(seqs: Sequences, idx: np.ndarray) -> int:
    """Completion tokens the SFT loss averages over for these examples (batching.pack's mask)."""
    if seqs.trained is not None:
        return int(sum((seqs.trained[i] >= 1).sum() for i in idx))
    return int(sum(len(seqs.ids[i]) - max(int(seqs.starts[i]), 1) for i in idx))


def _step_tokens(seqs: Sequences, plan: BatchPlan, step: int, ga: int) -> int:
    """Completion tokens of all (global) micro-batches of optimizer step `step`: SFT's loss denominator."""
    return max(1, sum(_loss_tokens(seqs, plan.indices(step * ga + j)) for j in range(ga)))


def trainable_problem(cfg: Config, train: list[data.Example]) -> str | None:
    """Why this training split (after SFT's filtering) cannot be trained on, or None."""
    path = cfg.data.path
    if cfg.train.method == "sft" and not train:
        return (f"{path}: SFT trains on desirable examples only, and the training split has none "
                "(every example is labelled false); label some true, or use train.method = \"kto\"")
    if not train:
        return f"{path}: the training split is empty"
    if cfg.train.method == "kto":
        nd = sum(1 for e in train if e.label)
        if nd == 0 or nd == len(train):
            return (f"{path}: KTO needs both desirable and undesirable examples; the training split has {nd} "
                    f"desirable and {len(train) - nd} undesirable"
                    + (" (for desirable-only data use train.method = \"sft\")" if nd else ""))
    return None


def preflight(cfg: Config, base: Path | None = None) -> None:
    """Checks that need no model weights, for the CLI to run before it makes a run directory or spawns a
    trainer: the dataset (DataError listing every bad line), the training split (InputError), and a local
    model directory (ModelError: missing files, custom code). Relative paths are taken from `base`."""
    from .config import DEMO_MODEL
    from .model import check_remote_code, resolve_path

    base = base or Path.cwd()
    data_path = Path(cfg.data.path).expanduser()
    if not data_path.is_absolute():
        data_path = base / data_path
    ds = data.load(data_path, None if cfg.data.format == "auto" else cfg.data.format, strict=cfg.data.strict,
                   tools=cfg.data.tools or None)
    train, _ = data.split(ds.examples, cfg.data.valid_fraction, cfg.train.seed)
    if cfg.train.method == "sft":
        train = [e for e in train if e.label]
    if msg := trainable_problem(cfg, train):
        raise InputError(msg)
    if cfg.model.path == DEMO_MODEL:
        return
    model_path = Path(cfg.model.path).expanduser()
    if not model_path.is_absolute() and (base / model_path).exists():
        model_path = base / model_path
    local = resolve_path(str(model_path) if model_path.exists() else cfg.model.path)
    if Path(local).is_dir():
        check_remote_code(Path(local), cfg.model.trust_remote_code)
    else:
        from .hub import HubError, check_available

        try:
            check_available(local)
        except HubError as e:
            raise ModelError(f"model.path: {e}") from None
