"""KTO reference log-probs: computed once before training, in eval mode, and cached in the run directory.

The reference is the model as training starts (the base with a fresh adapter, whose B matrices are
zero, or the warm-start adapter): it never changes, so each training step needs no reference forward.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import layerwise
from .batching import Sequences, eval_batches, pack
from .collective import host_sum
from .losses import packed_logps

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


def model_identity(model_dir: Path, dtype: str, quantize: int, adapter: str) -> str:
    """What makes reference log-probs valid: weight files (name, size, mtime), dtype, bits, adapter."""
    files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model_dir.glob("*.safetensors"))
    return json.dumps({"dir": str(model_dir), "files": files, "dtype": dtype, "quantize": quantize, "adapter": adapter})


def compute(model: nn.Module, ids: list[np.ndarray], starts: np.ndarray, batch_size: int,
            on_batch=None, part: tuple[int, int] | None = None) -> np.ndarray:
    """Summed completion log-probs of each sequence, batched by length, without gradient.

    `part=(rank, size)` computes only every size-th batch from `rank` (the others stay 0), so the
    workers of a data-parallel run split the pass and `all_sum` the results; the batches are those
    of a single process, so the numbers are too.
    """
    out = np.zeros(len(ids), dtype=np.float32)
    lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
    batches = eval_batches(lengths, batch_size)
    if part is not None:
        batches = batches[part[0] :: part[1]]
    stepwise = layerwise.stepwise_forward_ok(model)
    for idx in batches:
        batch = tuple(map(mx.array, pack([ids[i] for i in idx], starts[idx])))
        # one layer per evaluation where the model allows: bounds what the backend holds (core.layerwise)
        logps = layerwise.sequence_logps(model, *batch) if stepwise else packed_logps(model, *batch)
        out[idx] = np.array(logps.astype(mx.float32))
        if on_batch:
            on_batch(len(idx))
    return out


def reference_logps(model: nn.Module, seqs: Sequences, batch_size: int, run_dir: Path, model_id: str,
                    name: str = "train", on_batch=None, group=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ref log-probs of the examples, of their KL pairs, whether it came from the cache).

    With a distributed `group` of several workers, rank 0 alone reads and writes the cache file and
    its answer is shared: a hit is broadcast, a miss is computed with the batches split across the
    workers and summed (every worker ends with the full arrays; nobody else touches the file).
    """
    rank, size = (group.rank(), group.size()) if group is not None else (0, 1)
    key = cache_key(seqs, model_id)
    path = run_dir / f"reference-{name}.npz"
    n_kl = len(seqs.kl_ids) if seqs.kl_ids is not None else 0
    cached = _read_cache(path, key) if rank == 0 else None
    if size > 1:
        hit = host_sum(np.array([cached is not None], np.float32), group)[0] > 0
        if hit:  # rank 0's arrays everywhere: the others add zeros
            logps, kl = cached if cached is not None else (np.zeros(len(seqs), np.float32), np.zeros(n_kl, np.float32))
            return host_sum(logps, group), host_sum(kl, group), True
    elif cached is not None:
        return cached[0], cached[1], True
    was_training = model.training
    model.eval()
    part = (rank, size) if size > 1 else None
    extra = {"part": part} if part else {}
    logps = compute(model, seqs.ids, seqs.starts, batch_size, on_batch, **extra)
    kl = (compute(model, seqs.kl_ids, seqs.kl_starts, batch_size, on_batch, **extra)
          if seqs.kl_ids is not None else np.zeros(0, np.float32))
    model.train(was_training)
    if size > 1:
        logps, kl = host_sum(logps, group), host_sum(kl, group)
    if rank == 0:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, key=np.array(key), logps=logps, kl_logps=kl)
        tmp.replace(path)
    return logps, kl, False


def _read_cache(path: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    if path.is_file():
        with np.load(path) as cached:
            if str(cached["key"]) == key:
                return cached["logps"], cached["kl_logps"]
    return None
