"""The training loop: SFT or KTO on LoRA/DoRA adapters, compiled step, checkpoints, exact resume, events.

Shaped like mlx-lm's `tuner/trainer.py` (a compiled step that includes the optimizer update and
gradient accumulation) with what a long unattended run needs on top: precomputed KTO reference
log-probs, a NaN/inf guard, graceful stop on signals, verified checkpoints and bit-exact resume.
We do not call mlx-lm's `train()` because it cannot carry KTO's extra inputs, checkpoint optimizer
and RNG state, or stop on a signal.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from . import backend, data, memory, runs
from .batching import BatchPlan, Sequences, eval_batches, pack, tokenize
from .config import Config, load as load_config
from .fsutil import atomic_dir, atomic_write_bytes
from .losses import kto_kl, kto_losses_masked, packed_logps, packed_sft_loss
from .model import ADAPTER_CONFIG, ADAPTER_FILE, Loaded, load_for_training, write_adapters
from .reference import model_identity, reference_logps

Progress = Callable[[dict[str, Any]], None]
# metrics vector returned by the step: loss, trained tokens, Σ chosen rewards, #chosen, Σ rejected
# rewards, #rejected, kl, Σ chosen logps, Σ rejected logps, grad norm
N_METRICS = 10


class StopTraining(Exception):
    pass


@dataclass
class Batch:
    arrays: tuple[mx.array, ...]
    tokens: int  # trained (completion) tokens
    seq_tokens: int  # non-padding tokens


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
        self.world = mx.distributed.init()
        self.rank, self.size = self.world.rank(), self.world.size()
        self.events: runs.EventWriter | None = None
        self.stop_signal: int | None = None
        self.step = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def emit(self, type: str, **fields: Any) -> None:
        if self.events is not None:
            event = self.events.emit(type, self.step, **fields)
            if self.progress:
                self.progress(event)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is not None:
            os._exit(128 + signum)  # second signal: exit at once
        self.stop_signal = signum

    def run(self) -> int:
        """Train to completion, stop, or failure. Returns the process exit status."""
        lock = runs.RunLock(self.run_dir) if self.rank == 0 else None
        try:
            if lock:
                runs.check_writable(self.run_dir)
                lock.acquire()
                self.events = runs.EventWriter(self.run_dir)
                if lock.took_over_from:
                    self.emit("warning", message=f"took over the lock of a dead trainer (pid {lock.took_over_from})")
        except runs.RunError as e:
            print(f"tunedeck: error: {e}", flush=True)
            return 1
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._train()
        except StopTraining:
            return 0
        except Exception as e:  # the run is marked failed with the reason; the traceback goes to train.log
            traceback.print_exc()
            self.emit("error", message=f"{type(e).__name__}: {e}", kind="exception")
            return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.events:
                self.events.close()
            if lock:
                lock.release()

    # --- setup -------------------------------------------------------------------------------

    def _load_data(self) -> tuple[list[data.Example], list[data.Example]]:
        c = self.cfg
        ds = data.load(c.data.path, None if c.data.format == "auto" else c.data.format, strict=c.data.strict)
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
        return train, valid

    def _optimizer(self, total_steps: int) -> optim.Optimizer:
        return optim.AdamW(learning_rate=schedule(self.cfg, total_steps), weight_decay=self.cfg.train.weight_decay)

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

        def loss_fn(model, seq, desirable, ref, kl, poison):
            if not kto:
                loss, ntoks = packed_sft_loss(model, *seq)
                zero = mx.array(0.0)
                loss = loss if poison_grads else loss * poison
                return loss, mx.stack([ntoks, zero, zero, zero, zero, zero, zero])
            logps = packed_logps(model, *seq)
            losses, rewards = kto_losses_masked(
                logps, ref, desirable, kl, c.kto.beta, c.kto.desirable_weight, c.kto.undesirable_weight, c.kto.loss_type
            )
            d = desirable.astype(mx.float32)
            u = 1 - d
            lp = mx.stop_gradient(logps)
            aux = mx.stack([seq[3].sum(), (rewards * d).sum(), d.sum(), (rewards * u).sum(), u.sum(),
                            (lp * d).sum(), (lp * u).sum()])
            return (losses.mean() if poison_grads else losses.mean() * poison), aux

        value_and_grad = nn.value_and_grad(model, loss_fn)

        def step(seq, desirable, ref, kl_seq, ref_kl, poison, prev_grad, do_update):
            if kto and c.kto.loss_type == "kto":
                kl = kto_kl(packed_logps(model, *kl_seq), ref_kl)
                if size > 1:
                    kl = mx.distributed.all_sum(kl) / size
            else:
                kl = mx.array(0.0)
            (loss, aux), grad = value_and_grad(model, seq, desirable, ref, kl, poison)
            if poison_grads:
                grad = tree_map(lambda g: g * poison, grad)
            if prev_grad is not None:
                grad = tree_map(lambda x, y: x + y, grad, prev_grad)
            norm = mx.array(0.0)
            if do_update:
                if size > 1:
                    grad = nn.average_gradients(grad)
                if ga > 1:
                    grad = tree_map(lambda g: g / ga, grad)
                if clip > 0:
                    grad, norm = optim.clip_grad_norm(grad, clip)
                else:
                    norm = optim.clip_grad_norm(grad, float("inf"))[1]
                optimizer.update(model, grad)
                grad = None
            metrics = mx.concatenate([loss[None], aux[:1], aux[1:5], kl[None], aux[5:], norm[None]])
            return metrics, grad

        if not self.compiled:
            return step
        state = [model.state, optimizer.state, mx.random.state]
        return partial(mx.compile, inputs=state, outputs=state)(step)

    def _batch(self, seqs: Sequences, idx: np.ndarray, ref: np.ndarray | None, ref_kl: np.ndarray | None) -> Batch:
        """Arrays for one micro-batch: packed sequences, labels, reference log-probs, KL pairs (KTO)."""
        if self.size > 1:
            idx = idx[self.rank :: self.size]
        with_kl = ref_kl is not None and seqs.kl_ids is not None
        kl_ids = [seqs.kl_ids[i] for i in idx] if with_kl else []
        seq = pack([seqs.ids[i] for i in idx], seqs.starts[idx], longest=max(map(len, kl_ids), default=0))
        zero = mx.array(0.0)
        kl_seq: tuple[mx.array, ...] = (zero, zero, zero, zero)
        if with_kl:
            kl_seq = tuple(map(mx.array, pack(kl_ids, seqs.kl_starts[idx], longest=seq[0].shape[1],
                                              k_min=seq[1].shape[1])))
        arrays = (tuple(map(mx.array, seq)), mx.array(seqs.labels[idx]),
                  mx.array(ref[idx]) if ref is not None else zero, kl_seq,
                  mx.array(ref_kl[idx]) if with_kl else zero)
        return Batch(arrays, seqs.trained_tokens(idx), int(sum(len(seqs.ids[i]) for i in idx)))

    # --- evaluation --------------------------------------------------------------------------

    def _evaluate(self, model: nn.Module, seqs: Sequences, ref: Any) -> dict[str, float]:
        c = self.cfg
        if len(seqs) == 0:
            return {}
        was_training = model.training
        model.eval()
        total = ntoks = 0.0
        rewards: dict[bool, list[float]] = {True: [], False: []}
        batches = eval_batches(seqs.lengths, c.train.batch_size, c.train.eval_batches)
        for idx in batches:
            seq, desirable, r, kl_seq, r_kl = self._batch(seqs, idx, ref[0] if ref else None,
                                                          ref[1] if ref else None).arrays
            if c.train.method == "sft":
                loss, n = packed_sft_loss(model, *seq)
                mx.eval(loss, n)
                total += loss.item() * n.item()
                ntoks += n.item()
                continue
            kl = kto_kl(packed_logps(model, *kl_seq), r_kl) if c.kto.loss_type == "kto" else mx.array(0.0)
            losses, rw = kto_losses_masked(packed_logps(model, *seq), r, desirable, kl, c.kto.beta,
                                           c.kto.desirable_weight, c.kto.undesirable_weight, c.kto.loss_type)
            mx.eval(losses, rw)
            total += losses.sum().item()
            ntoks += len(idx)
            for reward, label in zip(rw.tolist(), desirable.tolist()):
                rewards[bool(label)].append(reward)
        model.train(was_training)
        if self.size > 1:
            sums = mx.distributed.all_sum(mx.array([total, ntoks]), stream=mx.cpu).tolist()
            total, ntoks = sums
        out = {"val_loss": total / max(ntoks, 1)}
        if c.train.method == "kto":
            rc = float(np.mean(rewards[True])) if rewards[True] else float("nan")
            rr = float(np.mean(rewards[False])) if rewards[False] else float("nan")
            out.update(val_rewards_chosen=rc, val_rewards_rejected=rr, val_margin=rc - rr)
        return out

    # --- checkpoints -------------------------------------------------------------------------

    def _save_checkpoint(self, model: nn.Module, optimizer: optim.Optimizer, adapter_cfg: dict[str, Any]) -> Path:
        final = self.run_dir / "checkpoints" / runs.checkpoint_name(self.step)
        pause = float(fault("ckpt_pause") or 0)
        state = {"step": self.step, "micro_batch": self.step * self.cfg.train.grad_accumulation,
                 "time": time.time(), "method": self.cfg.train.method}

        def wrote(name: str) -> None:
            if pause:
                print(f"ckpt-wrote {name}", flush=True)
                time.sleep(pause)

        with atomic_dir(final) as tmp:
            write_adapters(model, adapter_cfg, tmp)
            wrote(ADAPTER_FILE)
            mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
            wrote("optimizer.safetensors")
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            wrote("state.json")
            runs.write_manifest(tmp)
            wrote("manifest.json")
        runs.mark_latest(self.run_dir, final)
        self._publish_adapters(final, adapter_cfg)
        return final

    def _publish_adapters(self, ckpt: Path, adapter_cfg: dict[str, Any]) -> None:
        """Refresh runs/<id>/adapters/ (each file replaced atomically) from a verified checkpoint."""
        dest = self.run_dir / "adapters"
        dest.mkdir(exist_ok=True)
        atomic_write_bytes(dest / ADAPTER_FILE, (ckpt / ADAPTER_FILE).read_bytes())
        atomic_write_bytes(dest / ADAPTER_CONFIG, (json.dumps(adapter_cfg, indent=2) + "\n").encode())

    def _restore(self, ckpt: Path, model: nn.Module, optimizer: optim.Optimizer) -> None:
        model.load_weights(list(mx.load(str(ckpt / ADAPTER_FILE)).items()), strict=False)
        optimizer.init(model.trainable_parameters())
        optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
        self.step = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))["step"]
        mx.eval(model.parameters(), optimizer.state)

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
        if self.resume:
            if self.rank == 0:
                for p in runs.clean_leftovers(self.run_dir):
                    self.emit("warning", message=f"removed a half-written leftover: {p.name}")
            ckpt = runs.latest_checkpoint(self.run_dir)

        train_ex, valid_ex = self._load_data()
        loaded: Loaded = load_for_training(c.model, c.lora, dtype)
        model, tok = loaded.model, loaded.tokenizer
        train = tokenize(tok, train_ex, c.data.max_seq_len, kto, c.train.seed)
        valid = tokenize(tok, valid_ex, c.data.max_seq_len, kto, c.train.seed + 1)
        if train.truncated:
            self.emit("warning", message=f"{train.truncated} training example(s) exceed data.max_seq_len "
                                         f"({c.data.max_seq_len}); their prompts were cut from the left")
        plan = BatchPlan(train.lengths, train.labels if kto else None, c.train.batch_size, c.train.seed)
        total = self._total_steps(plan)

        ref = ref_valid = None
        ref_info: dict[str, Any] = {}
        if kto:
            t0 = time.perf_counter()
            ident = model_identity(loaded.model_dir, dtype, c.model.quantize, c.model.adapter)
            bs = c.train.batch_size * 2
            r_logps, r_kl, hit = reference_logps(model, train, bs, self.run_dir, ident, "train")
            v_logps, v_kl, _ = reference_logps(model, valid, bs, self.run_dir, ident, "valid")
            ref, ref_valid = (r_logps, r_kl), (v_logps, v_kl)
            ref_info = {"reference_cached": hit, "reference_seconds": round(time.perf_counter() - t0, 2)}

        if c.train.grad_checkpoint:
            from mlx_lm.tuner.trainer import grad_checkpoint

            grad_checkpoint(model.layers[0])
        optimizer = self._optimizer(total)
        if ckpt is not None:
            self._restore(ckpt, model, optimizer)
        # KTO trains with dropout off, as TRL does (disable_dropout=True): the policy/reference log-ratio
        # must be 0 at step 0; lora.dropout applies to SFT.
        model.train(not kto)

        self.emit(
            "start", method=c.train.method, total_steps=total, resumed_from=ckpt.name if ckpt else None,
            trainable_params=loaded.trainable, total_params=loaded.total, train_examples=len(train),
            valid_examples=len(valid), desirable=int(train.labels.sum()), undesirable=int((~train.labels).sum()),
            batches_per_epoch=plan.batches_per_epoch, backend=be.kind, dtype=dtype, note=be.note,
            model=c.model.path, workers=self.size, learning_rate=c.learning_rate, pid=os.getpid(), **ref_info,
        )
        if self.step == 0 and len(valid) and c.train.eval_every:
            self.emit("eval", **self._evaluate(model, valid, ref_valid))

        step_fn = self._make_step(model, optimizer)
        state = [model.state, optimizer.state, mx.random.state]
        ga = c.train.grad_accumulation
        nan_at = {k: int(v) for k in ("nan_loss", "nan_grad") if (v := fault(k)) is not None}
        step_sleep = float(fault("step_sleep") or 0)  # test-only: slow steps down to hit them with signals
        last_ckpt = ckpt
        t_start = time.perf_counter()
        steps_done = 0
        while self.step < total:
            t0 = time.perf_counter()
            grad = None
            acc = np.zeros(N_METRICS)
            tokens = seq_tokens = 0
            for j in range(ga):
                m = self.step * ga + j
                mx.random.seed(c.train.seed * 1_000_003 + m)  # dropout noise is a function of the position: resume needs no RNG state
                b = self._batch(train, plan.indices(m), ref[0] if ref else None, ref[1] if ref else None)
                poison = mx.array(float("nan") if self.step + 1 in nan_at.values() else 1.0)
                metrics, grad = step_fn(*b.arrays, poison, grad, j == ga - 1)
                mx.eval(state, metrics, grad)
                acc += np.array(metrics)
                tokens += b.tokens
                seq_tokens += b.seq_tokens
            self.step += 1
            steps_done += 1
            if step_sleep:
                time.sleep(step_sleep)
            if self.size > 1:
                acc = np.array(mx.distributed.all_sum(mx.array(acc), stream=mx.cpu))
                acc[0] /= self.size
                acc[6] /= self.size
                acc[9] /= self.size
                tokens = int(mx.distributed.all_sum(mx.array(tokens), stream=mx.cpu).item())
                seq_tokens = int(mx.distributed.all_sum(mx.array(seq_tokens), stream=mx.cpu).item())
            loss, norm = acc[0] / ga, acc[9]
            if not (math.isfinite(loss) and math.isfinite(norm)):
                what = "loss" if not math.isfinite(loss) else "gradient norm"
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
            stopping = self.stop_signal is not None
            if self.step % c.train.eval_every == 0 or self.step == total:
                if len(valid):
                    self.emit("eval", **self._evaluate(model, valid, ref_valid))
            if self.rank == 0 and (self.step % c.train.save_every == 0 or self.step == total or stopping):
                last_ckpt = self._save_checkpoint(model, optimizer, loaded.adapter_config)
                self.emit("checkpoint", path=str(last_ckpt.relative_to(self.run_dir)))
            if stopping:
                self.emit("stopped", signal=signal.Signals(self.stop_signal).name,
                          checkpoint=str(last_ckpt.relative_to(self.run_dir)) if last_ckpt else None)
                return 0
        self.emit("done", adapters="adapters", checkpoint=str(last_ckpt.relative_to(self.run_dir)) if last_ckpt else None,
                  seconds=round(time.perf_counter() - t_start, 2))
        return 0


def prepare_run(cfg: Config, config_path: Path | None, runs_root: Path, run_dir: Path | None = None) -> Path:
    """Create a run directory with the frozen config (data.path made absolute)."""
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
        if (run_dir / "events.jsonl").exists():
            raise runs.RunError(f"{run_dir} already holds a run; use --resume to continue it")
    runs.check_writable(run_dir)
    save(cfg, run_dir / "config.toml")
    return run_dir
