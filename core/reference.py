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

from .batching import Sequences, eval_batches, pack
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
            on_batch=None) -> np.ndarray:
    """Summed completion log-probs of each sequence, batched by length, without gradient."""
    out = np.zeros(len(ids), dtype=np.float32)
    lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
    for idx in eval_batches(lengths, batch_size):
        logps = packed_logps(model, *map(mx.array, pack([ids[i] for i in idx], starts[idx])))
        out[idx] = np.array(logps.astype(mx.float32))
        if on_batch:
            on_batch(len(idx))
    return out


def reference_logps(model: nn.Module, seqs: Sequences, batch_size: int, run_dir: Path, model_id: str,
                    name: str = "train", on_batch=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ref log-probs of the examples, of their KL pairs, whether it came from the cache)."""
    key = cache_key(seqs, model_id)
    path = run_dir / f"reference-{name}.npz"
    if path.is_file():
        with np.load(path) as cached:
            if str(cached["key"]) == key:
                return cached["logps"], cached["kl_logps"], True
    was_training = model.training
    model.eval()
    logps = compute(model, seqs.ids, seqs.starts, batch_size, on_batch)
    kl = (compute(model, seqs.kl_ids, seqs.kl_starts, batch_size, on_batch)
          if seqs.kl_ids is not None else np.zeros(0, np.float32))
    model.train(was_training)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key=np.array(key), logps=logps, kl_logps=kl)
    tmp.replace(path)
    return logps, kl, False
