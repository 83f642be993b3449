"""KTO reference log-probs: computed once before training, in eval mode, and cached in the run directory.

The reference is the model as training starts (the base with a fresh adapter, whose B matrices are
zero, or the warm-start adapter): it never changes, so each training step needs no reference forward.
The pass reports its progress through a throttled callback and can be stopped between batches; a cache
file that cannot be read or does not fit (truncated, bit-flipped, wrong keys or shapes, non-finite
numbers) is a miss: recomputed, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import backend, block_attention, layerwise, prefix_kl, unpadded
from .batching import Sequences, eval_batches, pack
from .collective import host_sum
from .fsutil import atomic_write_bytes
from .losses import packed_logps

CACHE_KEYS = {"key", "logps", "kl_logps"}
PAD_TO = 16  # core.batching.pack's default: batch lengths are padded to a multiple of it
REPORT_EVERY = 2.0  # seconds between progress reports (the first and the last are always reported)

#: report(done, total, rate in sequences/s, eta in seconds)
Report = Callable[[int, int, float, float], None]


class Stopped(Exception):
    """The reference pass was asked to stop (a signal) before it finished; nothing was cached."""


def cache_key(seqs: Sequences, model_id: str) -> str:
    """Hash of the token data and the model identity (weights files, dtype, quantization, adapter)."""
    h = hashlib.sha256(model_id.encode())
    for group in (seqs.ids, seqs.kl_ids or []):
        for s in group:
            h.update(s.tobytes())
            h.update(b"|")
    h.update(seqs.starts.tobytes())
    if seqs.kl_starts is not None:
        h.update(seqs.kl_starts.tobytes())
    return h.hexdigest()


def model_files(model_dir: Path) -> list[list[Any]]:
    """The model's weight files as [name, size, mtime] (cheap to take: no weights are read)."""
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in sorted(model_dir.glob("*.safetensors"))]


def model_identity(model_dir: Path, dtype: str, quantize: int, adapter: str) -> str:
    """What makes reference log-probs valid: weight files (name, size, mtime), dtype, bits, adapter."""
    return json.dumps({"dir": str(model_dir), "files": model_files(model_dir), "dtype": dtype, "quantize": quantize,
                       "adapter": adapter})


def compute(model: nn.Module, ids: list[np.ndarray], starts: np.ndarray, batch_size: int,
            on_batch: Callable[[int], None] | None = None, part: tuple[int, int] | None = None,
            stepwise: bool = False) -> np.ndarray:
    """Summed completion log-probs of each sequence, batched by length, without gradient; `stepwise`: one layer
    per evaluation (core.layerwise, where the model allows), as under train.grad_checkpoint.

    `on_batch(n)` runs after each batch of n sequences. `part=(rank, size)` computes only every
    size-th batch from `rank` (the others stay 0), so the workers of a data-parallel run split the pass
    and `all_sum` the results; the batches are those of a single process, so the numbers are too. The
    batches go in rounds of one per worker, and `on_batch` runs once a round on every worker (with n = 0
    where a short last round leaves a worker none), so the workers can agree on a stop between rounds.
    """
    out = np.zeros(len(ids), dtype=np.float32)
    stepwise = stepwise and layerwise.stepwise_forward_ok(model)
    flat, chunk = unpadded.supported(model), _query_chunk()

    def batch(idx: np.ndarray) -> int:
        if flat:
            out[idx] = unpadded.logps(model, unpadded.build([ids[i] for i in idx], starts[idx]), chunk)[0]
            return len(idx)
        seq = tuple(map(mx.array, pack([ids[i] for i in idx], starts[idx])))
        out[idx] = np.array((layerwise.sequence_logps if stepwise else packed_logps)(model, *seq).astype(mx.float32))
        return len(idx)

    _rounds(eval_batches(_lengths(ids), batch_size), part, batch, on_batch)
    return out


def compute_set(model: nn.Module, seqs: Sequences, batch_size: int, on_batch: Callable[[int], None] | None = None,
                part: tuple[int, int] | None = None, stepwise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`compute` of a set's examples and of their KL pairs: the pairs that start with their example's own prompt
    (core.prefix_kl) in the examples' batches, on their forward's keys/values, as training computes them; the
    others (prompts cut to fit) after, on their own. `on_batch(n)` counts both."""
    if seqs.kl_ids is None:
        return compute(model, seqs.ids, seqs.starts, batch_size, on_batch, part, stepwise), np.zeros(0, np.float32)
    out, kl_out = np.zeros(len(seqs), np.float32), np.zeros(len(seqs), np.float32)
    shared = _shared(model, seqs)
    stepwise = stepwise and layerwise.stepwise_forward_ok(model)
    flat, chunk = unpadded.supported(model), _query_chunk()

    def batch(idx: np.ndarray) -> int:
        own = shared[idx]
        ids = [seqs.ids[i] for i in idx]
        # a pair that is not shared gets its example as a stand-in here (its own prompt: no failure), computed below
        kl_ids = [seqs.kl_ids[i] if s else seqs.ids[i] for i, s in zip(idx, own)] if own.any() else None
        if flat:
            out[idx], kl_logps = unpadded.logps(model, unpadded.build(ids, seqs.starts[idx], kl_ids, PAD_TO), chunk)
            if kl_ids is not None:
                kl_out[idx[own]] = kl_logps[own]
            return len(idx) + int(own.sum())
        seq = tuple(map(mx.array, pack(ids, seqs.starts[idx], pad_to=PAD_TO)))
        if kl_ids is None:
            out[idx] = np.array((layerwise.sequence_logps if stepwise else packed_logps)(model, *seq))
            return len(idx)
        kl = tuple(map(mx.array, prefix_kl.pack(kl_ids, seqs.starts[idx])))
        logps, kl_logps = (prefix_kl.reference_logps if stepwise else prefix_kl.policy_and_kl_logps)(model, seq, kl)
        out[idx], kl_out[idx[own]] = np.array(logps), np.array(kl_logps)[own]
        return len(idx) + int(own.sum())

    _rounds(_set_batches(seqs, batch_size), part, batch, on_batch)
    rest = np.flatnonzero(~shared)
    if len(rest):
        kl_out[rest] = compute(model, [seqs.kl_ids[i] for i in rest], seqs.kl_starts[rest], batch_size, on_batch,
                               part, stepwise)
    return out, kl_out


def _query_chunk() -> int:
    """core.unpadded's causal attention block on this backend (core.block_attention: the tiny model on 64 bundled
    examples, this project's 2-core CPU: the pass 5.2 -> 3.6 s, a forward 3.2 -> 2.8 s)."""
    return block_attention.chunk_for(backend.detect().kind)


def _shared(model: nn.Module, seqs: Sequences) -> np.ndarray:
    """Which KL pairs the reference pass computes on their example's prompt keys/values."""
    if seqs.kl_shared is None or not prefix_kl.supported(model):
        return np.zeros(len(seqs), bool)
    return np.asarray(seqs.kl_shared, bool)


def _lengths(ids: list[np.ndarray]) -> np.ndarray:
    return np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))


def _set_batches(seqs: Sequences, batch_size: int) -> list[np.ndarray]:
    """`compute_set`'s batches: by example length padded as core.batching.pack pads it (to 16), and among equal
    padded lengths by KL completion length, so that the KL pass pads less at no cost to the examples' (on the
    bundled data: the KL pass's padded tokens 33% fewer for 1% more of the examples'; bench/reference_pass.py)."""
    widths = np.array([len(k) - int(st) for k, st in zip(seqs.kl_ids or [], seqs.kl_starts)])
    order = np.lexsort((widths, -(-seqs.lengths // PAD_TO)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _rounds(batches: list[np.ndarray], part: tuple[int, int] | None, batch: Callable[[np.ndarray], int],
            on_batch: Callable[[int], None] | None) -> None:
    """`batch(idx)` on this worker's batches, in rounds of one per worker (see `compute`)."""
    rank, size = part or (0, 1)
    for first in range(0, len(batches), size):
        n = batch(batches[first + rank]) if first + rank < len(batches) else 0
        if on_batch:
            on_batch(n)


def work(model: nn.Module, seqs: Sequences, batch_size: int, part: tuple[int, int] | None) -> int:
    """How many sequences (examples and KL pairs) `compute_set` computes on this worker."""
    rank, size = part or (0, 1)
    if seqs.kl_ids is None:
        return share(len(seqs), batch_size, part)
    batches = _set_batches(seqs, batch_size)[rank::size]
    n = sum(len(idx) for idx in batches)
    shared = _shared(model, seqs)
    return n + sum(int(shared[idx].sum()) for idx in batches) + share(int((~shared).sum()), batch_size, part)


def share(n: int, batch_size: int, part: tuple[int, int] | None) -> int:
    """How many of n sequences (batched as `compute` does) this worker computes."""
    rank, size = part or (0, 1)
    return sum(min(batch_size, n - i) for i in range(0, n, batch_size)[rank::size])


class Meter:
    """Counts the sequences done and calls `report` at most every `every` seconds, plus the first and the last."""

    def __init__(self, total: int, report: Report | None, every: float = REPORT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.report, self.every, self.clock = total, report, every, clock
        self.done = 0
        self.began = self._last = clock()
        self._emit()

    def add(self, n: int) -> None:
        self.done += n
        if self.done >= self.total or self.clock() - self._last >= self.every:
            self._emit()

    def _emit(self) -> None:
        if self.report is None:
            return
        self._last = now = self.clock()
        rate = self.done / (now - self.began) if now > self.began and self.done else 0.0
        eta = (self.total - self.done) / rate if rate else float("nan")
        self.report(self.done, self.total, rate, eta)


def reference_pass(model: nn.Module, sets: dict[str, Sequences], batch_size: int, run_dir: Path, model_id: str,
                   group=None, report: Report | None = None, between: Callable[[], bool] | None = None,
                   warn: Callable[[str], None] | None = None,
                   stepwise: bool = False) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    """Reference log-probs of each named set's examples and KL pairs (`compute_set`; `stepwise` under
    train.grad_checkpoint), and whether all came from the cache.

    The cache `run_dir/reference-NAME.npz` holds each set; a valid one is used, anything else is
    recomputed (`warn` says why). `report` follows the sequences this process computes (`Meter`);
    `between()` runs after each batch, and True stops the pass (`Stopped`). With a distributed `group` of
    several workers, rank 0 alone reads and writes the cache files and its answer is shared: a hit is
    broadcast, a miss is computed with the batches split across the workers and summed (every worker ends
    with the full arrays), and the workers stop together when any of them is asked to.
    """
    rank, size = (group.rank(), group.size()) if group is not None else (0, 1)
    warn = warn or (lambda message: None)
    if rank == 0:
        for p in clean_temp(run_dir):
            warn(f"removed a half-written leftover: {p.name}")
    keys = {name: cache_key(seqs, model_id) for name, seqs in sets.items()}
    out = _cached(sets, keys, run_dir, group, warn)
    todo = [name for name in sets if name not in out]
    if not todo:
        return out, True
    part = (rank, size) if size > 1 else None
    meter = Meter(sum(work(model, sets[n], batch_size, part) for n in todo), report)

    def on_batch(n: int) -> None:
        meter.add(n)
        stop = between() if between else False
        if size > 1:
            stop = host_sum(np.array([stop], np.float32), group)[0] > 0
        if stop:
            raise Stopped

    was_training = model.training
    model.eval()
    try:
        for name in todo:
            logps, kl = compute_set(model, sets[name], batch_size, on_batch, part, stepwise)
            if size > 1:
                logps, kl = host_sum(logps, group), host_sum(kl, group)
            if rank == 0:
                try:
                    write_cache(_path(run_dir, name), keys[name], logps, kl)
                except OSError as e:  # only a cache: training goes on with the arrays in memory
                    warn(f"could not save the reference log-probs to {_path(run_dir, name).name} "
                         f"({e.strerror or e}): a resume computes them again")
            out[name] = logps, kl
    finally:
        model.train(was_training)
    return out, False


def _cached(sets: dict[str, Sequences], keys: dict[str, str], run_dir: Path, group,
            warn: Callable[[str], None]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The sets whose valid cache file rank 0 found, with their arrays on every worker."""
    rank, size = (group.rank(), group.size()) if group is not None else (0, 1)
    cached = {name: read_cache(_path(run_dir, name), keys[name], seqs, warn) if rank == 0 else None
              for name, seqs in sets.items()}
    if size > 1:
        hits = host_sum(np.array([cached[n] is not None for n in sets], np.float32), group) > 0
    else:
        hits = np.array([cached[n] is not None for n in sets])
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for (name, seqs), hit in zip(sets.items(), hits):
        if hit and size > 1:  # rank 0's arrays everywhere: the others add zeros
            logps, kl = cached[name] or (np.zeros(len(seqs), np.float32), np.zeros(_n_kl(seqs), np.float32))
            out[name] = host_sum(logps, group), host_sum(kl, group)
        elif hit:
            out[name] = cached[name]  # type: ignore[assignment]
    return out


def _path(run_dir: Path, name: str) -> Path:
    return run_dir / f"reference-{name}.npz"


def _n_kl(seqs: Sequences) -> int:
    return len(seqs.kl_ids) if seqs.kl_ids is not None else 0


def clean_temp(run_dir: Path) -> list[Path]:
    """Remove cache files a killed writer left half-written (`reference-*.tmp.npz`, `.reference-*.tmp`)."""
    removed = [*run_dir.glob("reference-*.tmp.npz"), *run_dir.glob(".reference-*.tmp")]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def write_cache(path: Path, key: str, logps: np.ndarray, kl: np.ndarray) -> None:
    """The cache file, written to a temp file, fsynced and renamed into place."""
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), logps=logps, kl_logps=kl)
    atomic_write_bytes(path, buf.getvalue())


def read_cache(path: Path, key: str, seqs: Sequences,
               warn: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays if `path` holds a valid cache for `key` and these sequences, else None.

    A missing file or another key (other data or model) is a plain miss; a file that is unreadable or
    invalid is a miss with a warning naming it and what is wrong."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if set(f.files) != CACHE_KEYS:
                problem = f"keys {sorted(f.files)}, expected {sorted(CACHE_KEYS)}"
            elif str(f["key"]) != key:
                return None
            else:
                logps, kl = f["logps"], f["kl_logps"]
                problem = _array_problem("logps", logps, len(seqs)) or _array_problem("kl_logps", kl, _n_kl(seqs))
                if problem is None:
                    return logps.astype(np.float32), kl.astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    warn(f"{path.name}: invalid reference cache, {problem}; recomputing it")
    return None


def _array_problem(name: str, a: np.ndarray, n: int) -> str | None:
    if a.shape != (n,) or a.dtype.kind != "f":
        return f"{name} has shape {a.shape} and dtype {a.dtype}, expected ({n},) floats"
    if not np.isfinite(a).all():
        return f"{name} holds non-finite numbers"
    return None
