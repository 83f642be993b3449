"""The memory probe: MLX's measured peak of real training steps of a config on a random model.

It calibrates core.forecast (tests/test_memory_forecast.py; bench/forecast_7b.py at 7B on a GPU). The steps
are the trainer's own (core.step.TrainStep, core.objectives), on random tokens.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import backend, objectives
from .batching import Sequences
from .memory import GB, model_config_for
from .model import apply_adapters, use_training_kernels
from .reference import compute_set
from .step import TrainStep, compiles_update, micro_batch_seed, optimizer, wants_compile


def _unpatched_block_call(cls: type) -> Any:
    """The original `__call__` of a block class, unwrapping mlx-lm's `grad_checkpoint` patches."""
    fn = cls.__call__
    while getattr(fn, "__name__", "") == "checkpointed_fn" and fn.__closure__:
        cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
        if "fn" not in cells:
            break
        fn = cells["fn"]
    return fn


def _random_model(cfg, mc: dict[str, Any], dtype: str) -> nn.Module:
    """A random llama-architecture model of config.json `mc`, cast and quantized as core.model.load_base does,
    with the adapters of `cfg` (core.model.apply_adapters)."""
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict(mc))
    model.set_dtype(getattr(mx, dtype))
    if cfg.model.quantize:
        nn.quantize(
            model, group_size=64, bits=cfg.model.quantize,
            class_predicate=lambda _p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0,
        )
    mx.eval(model.parameters())
    use_training_kernels(model, cfg.model.quantized_matmul)
    apply_adapters(model, cfg.lora, "random")
    return model


def _random_sequences(n: int, length: int, trained: int, vocab: int, kto: bool, seed: int) -> Sequences:
    """n random sequences, the last `trained` tokens of each trained; for KTO each with a KL partner (its
    prompt and the next sequence's completion)."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(3, vocab, size=length).astype(np.int32) for _ in range(n)]
    starts = np.full(n, length - trained, dtype=np.int64)
    seqs = Sequences(ids=ids, starts=starts, labels=np.arange(n) % 2 == 0)
    if kto:
        p = length - trained
        seqs.set_kl_pairs([np.concatenate([ids[i][:p], ids[(i + 1) % n][p:]]) for i in range(n)], starts.copy())
    return seqs


def _train(step: TrainStep, seqs: Sequences, ref: tuple[np.ndarray, np.ndarray] | None, steps: int,
           seed: int) -> None:
    """`steps` optimizer steps on the first train.batch_size sequences, as the trainer runs them."""
    t = step.objective.cfg.train
    for s in range(steps):
        grad = None
        for j in range(t.grad_accumulation):
            mx.random.seed(micro_batch_seed(seed, s * t.grad_accumulation + j))  # as the trainer: per micro-batch
            _, grad = step(step.batch(seqs, np.arange(t.batch_size), ref), grad, update=j == t.grad_accumulation - 1)


def measure_peak(cfg, steps: int = 2, seq_len: int | None = None, model_config: dict | None = None,
                 seed: int = 0, completion_len: int | None = None) -> dict[str, float]:
    """Measure MLX's peak memory (GB) of `steps` real training steps of `cfg` on random tokens.

    Builds a random model of `model_config` (default: `model_config_for(cfg.model.path)`) in memory,
    casts and quantizes it as `core.model.load_base` does, applies the adapters with
    `core.model.apply_adapters`, and runs the trainer's own step (`core.step.TrainStep`) and optimizer on
    `train.batch_size` sequences of `seq_len` (default `data.max_seq_len`) tokens, the last
    `completion_len` of them trained (default: all but the first, as `forecast` assumes); for KTO it
    first runs the reference pass (`core.reference.compute_set`, batch 2×B) over the examples and their KL
    partners, as the trainer does before training. Returns the peaks of each phase: `weights_gb` (active
    after the model and adapters are built), `reference_gb`, `step_gb`, `peak_gb` (the largest), all net of
    what the process held before the call. On a GPU it measures the same at 7B:
    `measure_peak(cfg, model_config=model_config_for(cfg.model.path))`.
    """
    backend.limit_cuda_graphs()  # as the trainer runs
    from mlx_lm.models import llama

    mc = dict(model_config or model_config_for(cfg.model.path) or {})
    if not mc:
        raise ValueError(f"no config.json known for {cfg.model.path!r}; pass model_config")
    objective = objectives.for_config(cfg)
    B, L = cfg.train.batch_size, seq_len or cfg.data.max_seq_len
    block_cls = llama.TransformerBlock
    saved_call = block_cls.__call__
    mx.synchronize()
    base = mx.get_active_memory()  # arrays of the calling process, left out of the numbers
    block_cls.__call__ = _unpatched_block_call(block_cls)
    mx.random.seed(seed)
    try:
        model = _random_model(cfg, mc, backend.dtype_for(backend.detect(), cfg.model.dtype))
        mx.synchronize()
        mx.clear_cache()
        out = {"weights_gb": (mx.get_active_memory() - base) / GB, "reference_gb": 0.0}
        # the reference pass runs over micro-batches of 2B
        seqs = _random_sequences(2 * B if objective.kto else B, L, min(completion_len or L - 1, L - 1),
                                 int(mc["vocab_size"]), objective.kto, seed)
        ref = None
        if objective.uses_reference:
            mx.reset_peak_memory()
            model.eval()
            ref = compute_set(model, seqs, 2 * B, stepwise=cfg.train.grad_checkpoint)
            mx.synchronize()
            out["reference_gb"] = (mx.get_peak_memory() - base) / GB
            mx.clear_cache()
        step = TrainStep(objective, model, optimizer(cfg, max(steps, 1)), wants_compile(cfg),
                         compile_update=compiles_update(cfg, backend.detect().kind))
        model.train(not objective.kto)
        mx.reset_peak_memory()
        _train(step, seqs, ref, steps, seed)
        mx.synchronize()
        out["step_gb"] = (mx.get_peak_memory() - base) / GB
        out["peak_gb"] = max(out["weights_gb"], out["reference_gb"], out["step_gb"])
        return out
    finally:
        block_cls.__call__ = saved_call
