"""The training loop: SFT or KTO on LoRA/DoRA adapters, checkpoints, exact resume, events.

Shaped like mlx-lm's `tuner/trainer.py` (a compiled step that includes the optimizer update and gradient
accumulation) with what a long unattended run needs on top: precomputed KTO reference log-probs, a NaN/inf
guard, graceful stop on signals, verified checkpoints and bit-exact resume. We do not call mlx-lm's `train()`
because it cannot carry KTO's extra inputs, checkpoint optimizer and RNG state, or stop on a signal.

The parts: core.objectives (SFT and KTO: which examples, the loss, the metrics), core.step (a micro-batch's
arrays, gradients, accumulation and update), core.reference (KTO's reference pass), core.checkpoints
(writing, verifying, resuming), core.collective (the workers of a data-parallel run), core.faults (test-only).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import mlx.core as mx
import numpy as np

from . import (
    backend,
    checkpoints,
    collective,
    data,
    faults,
    layerwise,
    memory,
    objectives,
    run_prep,
    runlock,
    runs,
    samples,
)
from .batching import BatchPlan, Sequences, tokenize
from .config import Config
from .config import load as load_config
from .model import Loaded, ModelError, load_for_training
from .objectives import N_METRICS, WORKER_MEAN, Metric
from .progress import redirect
from .reference import Stopped as ReferenceStopped
from .reference import model_files, model_identity, reference_pass
from .run_prep import InputError
from .step import TrainStep, compiles_update, micro_batch_seed, optimizer, wants_compile
from .template import TemplateError

Progress = Callable[[dict[str, Any]], None]
HANGUP_MESSAGE = ("terminal closed (SIGHUP): training continues, its output goes to train.log; follow it with "
                  "`tunedeck runs` or the app, stop it with `tunedeck stop RUN_DIR`")
References = tuple[np.ndarray, np.ndarray]  # reference log-probs of a split's examples and of their KL pairs


@dataclass
class _Run:
    """What the loop works on once everything before step 1 is done."""

    loaded: Loaded
    step: TrainStep
    train: Sequences
    valid: Sequences
    plan: BatchPlan
    total: int  # optimizer steps
    ref: References | None  # KTO
    ref_valid: References | None
    last_ckpt: Path | None
    sampler: samples.Sampler | None  # rank 0, train.sample_every > 0


class _Signals:
    """The training process's signals. SIGINT/SIGTERM ask for a stop: the first after the current step (with a
    checkpoint), a second at once. SIGHUP (SSH link dropped, terminal closed) does not stop training: the
    standard streams that were a terminal go to train.log, and a hang-up is pending for the trainer to announce."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.stop: int | None = None  # the stop signal received
        self.hung_up = False
        self.hangup_pending = False  # its warning is written by the next event, not inside the handler
        self._terminal: list[TextIO] = []  # standard streams that were a terminal at the start
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        self._terminal = [s for s in (sys.stdout, sys.stderr) if _is_terminal(s)]
        self._previous = {sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_stop(self, signum: int, _frame: Any) -> None:
        if self.stop is not None:
            os._exit(128 + signum)  # second signal: exit at once
        self.stop = signum
        # Python runs handlers only between bytecodes, so a second signal during a long MLX call (a big
        # model's step) would wait for it: from now on the default action applies and ends the process at once
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)

    def _on_hangup(self, _signum: int, _frame: Any) -> None:
        if self.hung_up:
            return
        self.hung_up = self.hangup_pending = True
        with contextlib.suppress(OSError):
            for stream in self._terminal:
                redirect(stream, self.log)


class Trainer:
    def __init__(self, run_dir: Path, resume: bool = False, progress: Progress | None = None) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress  # stops at a SIGHUP: the terminal is gone
        self.cfg, _ = load_config(run_dir / "config.toml")
        self.world = collective.init_group()
        self.rank, self.size = self.world.rank(), self.world.size()
        self.objective = objectives.for_config(self.cfg, self.world)
        self.events: runs.EventWriter | None = None
        self.signals = _Signals(run_dir / "train.log")
        self.step = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def emit(self, type: str, **fields: Any) -> None:
        self._note_hangup()
        if self.events is not None:
            with checkpoints.writing(self.run_dir, "events.jsonl"):  # a full disk: WriteError, the run stops
                event = self.events.emit(type, self.step, **fields)
            if self.progress and not self.signals.hung_up:
                self.progress(event)

    def _warn(self, message: str) -> None:
        self.emit("warning", message=message)

    def _note_hangup(self) -> None:
        """The `warning` event for a SIGHUP that arrived since the last event: those following hear of it."""
        if self.signals.hangup_pending:
            self.signals.hangup_pending = False
            self.emit("warning", signal="SIGHUP", message=HANGUP_MESSAGE)

    def run(self) -> int:
        """Train to completion, stop, or failure. Returns the process exit status."""
        backend.limit_cuda_graphs()
        lock = runlock.RunLock(self.run_dir) if self.rank == 0 else None
        try:
            if lock:
                runs.check_writable(self.run_dir)
                lock.acquire()
                self.events = runs.EventWriter(self.run_dir, check=lock.check)  # notices a removed/replaced lock
                if lock.took_over_from:
                    self._warn(f"took over the lock of a dead trainer (pid {lock.took_over_from})")
        except (runs.RunError, OSError) as e:
            print(f"tunedeck: error: {e}", file=sys.stderr, flush=True)
            return 1
        with self.signals:
            try:
                return self._train()
            except (data.DataError, ModelError, InputError, TemplateError, checkpoints.CheckpointError) as e:
                return self._fail(str(e), "input")  # the user's data, model or checkpoint: the message says why
            except checkpoints.WriteError as e:
                return self._fail(str(e), "io")
            except Exception as e:  # the run is marked failed with the reason; the traceback goes to train.log
                traceback.print_exc()
                hint = " (another worker stopped first: see train.log)" if self.size > 1 and "peer" in str(e) else ""
                return self._fail(f"{type(e).__name__}: {e}{hint}", "exception")
            finally:
                if self.events:
                    self.events.close()
                if lock:
                    lock.release()

    def _fail(self, message: str, kind: str) -> int:
        """Mark the run failed with an error event (or, if even that cannot be written, say so on stderr)."""
        try:
            self.emit("error", message=message, kind=kind)
        except checkpoints.WriteError as e:
            also = f"\n(and the error event could not be written: {e})" if str(e) != message else ""
            print(f"tunedeck: error: {message}{also}", file=sys.stderr, flush=True)
        return 1

    # --- before step 1 -----------------------------------------------------------------------

    def _setup(self) -> _Run | None:
        """Data, model, the KTO reference pass, the optimizer (restored on resume) and the step; the `start`
        event. None when a signal stopped the reference pass."""
        c = self.cfg
        be = backend.detect()
        dtype = backend.dtype_for(be, c.model.dtype)
        mx.random.seed(c.train.seed)
        if c.train.batch_size % self.size:
            raise InputError(f"train.batch_size ({c.train.batch_size}) must be a multiple of the number of workers "
                             f"({self.size}): each worker takes an equal share of every batch")
        ckpt = self._resume_point() if self.resume and self.rank == 0 else None  # rank 0 alone reads checkpoints
        train_ex, valid_ex, data_sha256 = run_prep.split_examples(c, c.data.path, self._warn)
        loaded = load_for_training(c.model, c.lora, dtype, c.train.seed)
        layerwise.use_compiled(loaded.model, c.train.grad_checkpoint and wants_compile(c))  # the reference pass
        inputs = {"data_sha256": data_sha256, "model_files": model_files(loaded.model_dir)}
        for message in run_prep.changed_inputs(self.run_dir, c, inputs) if ckpt is not None else []:
            self._warn(message)
        train, valid = self._sequences(loaded, train_ex, valid_ex)
        plan = self.objective.plan(train)
        found = self._reference(loaded, dtype, train, valid)
        if found is None:  # nothing to checkpoint before step 1; a resume recomputes the pass
            self.emit("stopped", signal=_signal_name(self.signals.stop or 0), phase="reference",
                      checkpoint=self._rel(ckpt))
            return None
        refs, ref_info = found
        total = _total_steps(c, plan)
        step = self._step(loaded, total, ckpt)
        self.emit(
            "start", method=c.train.method, total_steps=total, resumed_from=ckpt.name if ckpt else None,
            trainable_params=loaded.trainable, total_params=loaded.total, train_examples=len(train),
            valid_examples=len(valid), desirable=int(train.labels.sum()), undesirable=int((~train.labels).sum()),
            batches_per_epoch=plan.batches_per_epoch, backend=be.kind, dtype=dtype, note=be.note,
            model=c.model.path, workers=self.size, learning_rate=c.learning_rate, pid=os.getpid(), **ref_info,
            **inputs,
        )
        sampler = samples.prepare(c, loaded.tokenizer, valid_ex, train_ex + valid_ex, self._warn) if not self.rank else None
        return _Run(loaded, step, train, valid, plan, total, refs.get("train"), refs.get("valid"), ckpt, sampler)

    def _resume_point(self) -> Path | None:
        """The checkpoint to resume from, after removing half-written leftovers and moving damaged ones aside."""
        ckpt, warnings = checkpoints.resume_from(self.run_dir)
        for message in warnings:
            self._warn(message)
        return ckpt

    def _sequences(self, loaded: Loaded, train_ex: list[data.Example],
                   valid_ex: list[data.Example]) -> tuple[Sequences, Sequences]:
        """Both splits as token ids, trained spans and (KTO) KL pairs."""
        c, kto = self.cfg, self.objective.kto
        options = dict(string_format=c.data.string_format, train_on=c.data.train_on)
        train = tokenize(loaded.tokenizer, train_ex, c.data.max_seq_len, kto, c.train.seed,
                         pairing=self.objective.pairing("train"), **options)
        valid = tokenize(loaded.tokenizer, valid_ex, c.data.max_seq_len, kto, c.train.seed + 1,
                         pairing=self.objective.pairing("valid"), **options)
        if train.truncated:
            self._warn(f"{train.truncated} training example(s) exceed data.max_seq_len ({c.data.max_seq_len}); "
                       "their prompts were cut from the left")
        return train, valid

    def _reference(self, loaded: Loaded, dtype: str, train: Sequences,
                   valid: Sequences) -> tuple[dict[str, References], dict[str, Any]] | None:
        """KTO's reference log-probs of both splits, computed once (or read from the run's cache), and the start
        event's fields about them; nothing for SFT; None when a signal stopped the pass."""
        if not self.objective.uses_reference:
            return {}, {}
        c, t0 = self.cfg, time.perf_counter()
        ident = model_identity(loaded.model_dir, dtype, c.model.quantize, c.model.adapter)
        try:
            done, hit = reference_pass(loaded.model, {"train": train, "valid": valid}, c.train.batch_size * 2,
                                       self.run_dir, ident, group=self.world, report=self._report_reference,
                                       between=self._reference_between, warn=self._warn,
                                       stepwise=c.train.grad_checkpoint)
        except ReferenceStopped:
            return None
        return done, {"reference_cached": hit, "reference_seconds": round(time.perf_counter() - t0, 2)}

    def _report_reference(self, done: int, total: int, rate: float, eta: float) -> None:
        """A `reference` event: sequences done of this process's total, their rate, the ETA, the memory."""
        self.emit("reference", done=done, total=total, rate=round(rate, 2), eta_s=round(eta, 1),
                  workers=self.size, **memory.readings())

    def _reference_between(self) -> bool:
        """What the reference pass asks after each batch: stop now? (a signal arrived)."""
        faults.pause("ref_sleep")  # test-only: slow the pass down to hit it with signals
        return self.signals.stop is not None

    def _step(self, loaded: Loaded, total: int, ckpt: Path | None) -> TrainStep:
        """The optimizer (restored on resume, then the same on every worker) and the training step."""
        model = loaded.model
        opt = optimizer(self.cfg, total)
        if ckpt is not None:
            self.step = checkpoints.restore(ckpt, model, opt)
            checkpoints.repair_adapters(self.run_dir, ckpt, self._warn)
        if self.size > 1:
            self.step = collective.sync_from_rank0(model, opt, self.step, ckpt is not None, self.world)
        # With gradient checkpointing the recomputed forward would draw fresh dropout masks (gradients off by
        # 80% in a test at p=0.3), so dropout is off there too
        dropout = self.objective.dropout
        if dropout and self.cfg.train.grad_checkpoint:
            dropout = False
            self._warn("lora.dropout is not applied with train.grad_checkpoint = true: the recomputed forward "
                       "pass would draw different dropout masks")
        model.train(dropout)
        return TrainStep(self.objective, model, opt, wants_compile(self.cfg), self.world,
                         compiles_update(self.cfg, backend.detect().kind))

    # --- the loop ----------------------------------------------------------------------------

    def _train(self) -> int:
        run = self._setup()
        if run is None:
            return 0
        t = self.cfg.train
        if self.step == 0 and len(run.valid) and t.eval_every:
            self.emit("eval", **self._evaluate(run.step, run.valid, run.ref_valid))
        t_start, steps_done = time.perf_counter(), 0
        while self.step < run.total:
            t0 = time.perf_counter()
            acc, tokens, seq_tokens = self._micro_batches(run)
            self.step += 1
            steps_done += 1
            self._note_hangup()
            faults.pause("step_sleep")  # test-only: slow steps down to hit them with signals
            acc, tokens, seq_tokens, stop_sum = self._gather(acc, tokens, seq_tokens)
            loss, norm = acc[Metric.LOSS] / t.grad_accumulation, acc[Metric.GRAD_NORM]
            if not (math.isfinite(loss) and math.isfinite(norm)):
                return self._non_finite(loss, norm, run.last_ckpt)
            dt, last = time.perf_counter() - t0, self.step == run.total
            if self.step % t.report_every == 0 or last:
                eta = (time.perf_counter() - t_start) / steps_done * (run.total - self.step)
                self.emit("step", loss=loss, lr=float(run.step.optimizer.learning_rate.item()), tokens=tokens,
                          tokens_per_sec=round(tokens / dt, 1), seq_tokens_per_sec=round(seq_tokens / dt, 1),
                          tokens_per_sec_per_worker=round(tokens / dt / self.size, 1), step_time=round(dt, 4),
                          grad_norm=float(norm), total_steps=run.total, eta_sec=round(eta, 1),
                          **memory.readings(), **self.objective.step_fields(acc))
            # every worker decides from the same all-summed flag, so all stop after the same step
            stopping = stop_sum > 0 if self.size > 1 else self.signals.stop is not None
            if (self.step % t.eval_every == 0 or last) and len(run.valid):
                self.emit("eval", **self._evaluate(run.step, run.valid, run.ref_valid))
            if run.sampler and (self.step % t.sample_every == 0 or last):
                for fields in run.sampler.answers(run.loaded.model, run.loaded.tokenizer):
                    self.emit("sample", **fields)
            if self.rank == 0 and (self.step % t.save_every == 0 or last or stopping):
                run.last_ckpt = self._save(run)
            if stopping:
                self.emit("stopped", signal=_signal_name(self.signals.stop or stop_sum),
                          checkpoint=self._rel(run.last_ckpt))
                return 0
        self.emit("done", adapters="adapters", checkpoint=self._rel(run.last_ckpt),
                  seconds=round(time.perf_counter() - t_start, 2))
        return 0

    def _micro_batches(self, run: _Run) -> tuple[np.ndarray, int, int]:
        """The next optimizer step's micro-batches, trained: their summed metrics rows and token counts."""
        seed, ga = self.cfg.train.seed, self.cfg.train.grad_accumulation
        acc, tokens, seq_tokens = np.zeros(N_METRICS), 0, 0
        step_tokens = self.objective.step_tokens(run.train, run.plan, self.step)
        grad = faults.poison_gradients(self.step + 1, run.loaded.model.trainable_parameters())
        for j in range(ga):
            m = self.step * ga + j
            mx.random.seed(micro_batch_seed(seed, m, self.rank, self.size))
            b = run.step.batch(run.train, run.plan.indices(m), run.ref, step_tokens=step_tokens)
            metrics, grad = run.step(faults.poison_loss(b, self.step + 1), grad, update=j == ga - 1)
            acc += metrics
            tokens += b.tokens
            seq_tokens += b.seq_tokens
        return acc, tokens, seq_tokens

    def _gather(self, acc: np.ndarray, tokens: int, seq_tokens: int) -> tuple[np.ndarray, int, int, int]:
        """One all_sum a step: the metrics, the token counts, and any worker's stop signal (0 with one worker)."""
        if self.size == 1:
            return acc, tokens, seq_tokens, 0
        summed = self._sum([*acc, tokens, seq_tokens, self.signals.stop or 0])
        acc = summed[:N_METRICS]
        acc[WORKER_MEAN] /= self.size
        return acc, int(summed[-3]), int(summed[-2]), int(summed[-1])

    def _non_finite(self, loss: float, norm: float, last_ckpt: Path | None) -> int:
        """The NaN/inf guard: an error event naming the step and the likely causes, nothing saved."""
        what = f"loss ({loss})" if not math.isfinite(loss) else f"gradient norm ({norm})"
        self.emit("error", kind="nan", message=(
            f"non-finite {what} at step {self.step}; stopped without saving. Likely causes: a learning rate too "
            f"high (now {self.cfg.learning_rate:g}), float16 overflow (use bfloat16/float32), or a bad batch in "
            f"the data. Last good checkpoint: {last_ckpt.name if last_ckpt else 'none'}"))
        return 1

    def _save(self, run: _Run) -> Path:
        """A checkpoint of this step (which publishes adapters/), old ones pruned, and its event."""
        t = self.cfg.train
        state = {"micro_batch": self.step * t.grad_accumulation, "time": time.time(), "method": t.method}
        ckpt = checkpoints.save(self.run_dir, self.step, state, run.loaded.model, run.step.optimizer,
                                run.loaded.adapter_config)
        pruned, warning = checkpoints.prune_verified(self.run_dir, ckpt, t.keep_checkpoints)
        if warning:
            self._warn(warning)
        self.emit("checkpoint", path=self._rel(ckpt), **({"pruned": pruned} if pruned else {}))
        return ckpt

    def _evaluate(self, step: TrainStep, seqs: Sequences, ref: References | None) -> dict[str, float]:
        """The objective's validation numbers; several workers each take whole batches (every size-th)."""
        if len(seqs) == 0:
            return {}
        model, was_training = step.model, step.model.training
        model.eval()
        sums = np.zeros(self.objective.EVAL_SUMS)
        batches = self.objective.eval_batches(seqs)
        with step.evaluating():
            for idx in batches[self.rank :: self.size]:
                sums += self.objective.eval_sums(model, step.batch(seqs, idx, ref, shard=False))
        model.train(was_training)
        return self.objective.eval_fields(self._sum(sums))

    def _sum(self, values: Any) -> np.ndarray:
        """Element-wise float64 sum of a host vector over the workers (the vector itself with one worker)."""
        return collective.host_sum(np.asarray(values, dtype=np.float64), self.world)

    def _rel(self, ckpt: Path | None) -> str | None:
        return str(ckpt.relative_to(self.run_dir)) if ckpt else None


def _total_steps(cfg: Config, plan: BatchPlan) -> int:
    """train.iters, or with train.epochs > 0 the steps of that many passes over the training split."""
    t = cfg.train
    if t.epochs > 0:
        return max(1, math.ceil(t.epochs * plan.batches_per_epoch / t.grad_accumulation))
    return t.iters


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
