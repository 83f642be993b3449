"""Memory: live readings for step events and gauges."""

from __future__ import annotations

import os
from typing import Any

GB = 1e9


def readings() -> dict[str, float]:
    """Process RSS, MLX active/peak memory and system memory, in GB."""
    import mlx.core as mx
    import psutil

    vm = psutil.virtual_memory()
    return {
        "rss_gb": round(psutil.Process(os.getpid()).memory_info().rss / GB, 3),
        "mlx_active_gb": round(mx.get_active_memory() / GB, 3),
        "peak_memory_gb": round(mx.get_peak_memory() / GB, 3),
        "sys_used_gb": round((vm.total - vm.available) / GB, 3),
        "sys_available_gb": round(vm.available / GB, 3),
        "sys_total_gb": round(vm.total / GB, 3),
    }


def _unpatched_block_call(cls: type) -> Any:
    """The original `__call__` of a block class, unwrapping mlx-lm's `grad_checkpoint` patches."""
    fn = cls.__call__
    while getattr(fn, "__name__", "") == "checkpointed_fn" and fn.__closure__:
        cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
        if "fn" not in cells:
            break
        fn = cells["fn"]
    return fn


def measure_peak(cfg, steps: int = 2, seq_len: int | None = None, model_config: dict | None = None,
                 seed: int = 0) -> dict[str, float]:
    """Measure MLX's peak memory (GB) of `steps` real training steps of `cfg` on random tokens.

    Builds a random model of `model_config` (default: `model_config_for(cfg.model.path)`) in memory,
    casts and quantizes it as `core.model.load_base` does, applies the adapters with
    `core.model.apply_adapters`, and runs the trainer's own compiled step (`Trainer._make_step`) and
    optimizer on `train.batch_size` sequences of `seq_len` (default `data.max_seq_len`) tokens; for
    KTO it first runs the reference pass (`core.reference.compute`, batch 2×B) over the examples and
    their KL partners, as the trainer does before training. Returns the peaks of each phase:
    `weights_gb` (active after the model and adapters are built), `reference_gb`, `step_gb`,
    `peak_gb` (the largest). For the bench: the lead runs it at 7B on a GPU.
    """
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.models import llama

    from . import backend
    from .batching import Sequences
    from .model import apply_adapters
    from .reference import compute as reference_compute
    from .trainer import Trainer

    mc = dict(model_config or model_config_for(cfg.model.path) or {})
    if not mc:
        raise ValueError(f"no config.json known for {cfg.model.path!r}; pass model_config")
    dtype = backend.dtype_for(backend.detect(), cfg.model.dtype)
    kto = cfg.train.method == "kto"
    B = cfg.train.batch_size
    L = seq_len or cfg.data.max_seq_len

    block_cls = llama.TransformerBlock
    saved_call = block_cls.__call__
    block_cls.__call__ = _unpatched_block_call(block_cls)
    mx.random.seed(seed)
    try:
        model = llama.Model(llama.ModelArgs.from_dict(mc))
        model.set_dtype(getattr(mx, dtype))
        if cfg.model.quantize:
            nn.quantize(
                model, group_size=64, bits=cfg.model.quantize,
                class_predicate=lambda _p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0,
            )
        mx.eval(model.parameters())
        apply_adapters(model, cfg.lora, "random")
        mx.synchronize()
        mx.clear_cache()
        out = {"weights_gb": mx.get_active_memory() / GB, "reference_gb": 0.0}

        rng = np.random.default_rng(seed)
        vocab = int(mc["vocab_size"])
        ids = [rng.integers(3, vocab, size=L).astype(np.int32) for _ in range(B)]
        starts = np.full(B, L // 2, dtype=np.int64)
        labels = np.arange(B) % 2 == 0
        seqs = Sequences(ids=ids, starts=starts, labels=labels)
        ref = ref_kl = None
        if kto:
            seqs.kl_ids = [np.concatenate([ids[i][: L // 2], ids[(i + 1) % B][L // 2:]]) for i in range(B)]
            seqs.kl_starts = starts.copy()
            mx.reset_peak_memory()
            model.eval()
            ref = reference_compute(model, seqs.ids, seqs.starts, 2 * B)
            ref_kl = reference_compute(model, seqs.kl_ids, seqs.kl_starts, 2 * B)
            mx.synchronize()
            out["reference_gb"] = mx.get_peak_memory() / GB
            mx.clear_cache()

        if cfg.train.grad_checkpoint:
            from mlx_lm.tuner.trainer import grad_checkpoint

            grad_checkpoint(model.layers[0])
        trainer = object.__new__(Trainer)
        trainer.cfg, trainer.size, trainer.rank = cfg, 1, 0
        mode = getattr(cfg.train, "compile", "auto")  # as Trainer._train decides
        trainer.compiled = mode == "on" or (mode == "auto" and backend.detect().kind != "cpu")
        optimizer = trainer._optimizer(max(steps, 1))
        model.train(not kto)
        step = trainer._make_step(model, optimizer)
        state = [model.state, optimizer.state, mx.random.state]
        mx.reset_peak_memory()
        ga = cfg.train.grad_accumulation
        for s in range(steps):
            grad = None
            for j in range(ga):
                batch = trainer._batch(seqs, np.arange(B), ref, ref_kl)
                metrics, grad = step(*batch.arrays, mx.array(1.0), grad, j == ga - 1)
                mx.eval(state, metrics, grad)
        mx.synchronize()
        out["step_gb"] = mx.get_peak_memory() / GB
        out["peak_gb"] = max(out["weights_gb"], out["reference_gb"], out["step_gb"])
        return out
    finally:
        block_cls.__call__ = saved_call
