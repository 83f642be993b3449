"""Where a layer-by-layer (train.grad_checkpoint) training step spends its time, SFT against KTO.

Runs core.step.TrainStep as the trainer builds it (reference_pass.load: dtype, quantization, the per-layer
matmul choice, a fresh r16 q,v adapter; the optimizer update compiled where the trainer compiles it) on
synthetic batches (compare_mlx_lm.py's: --prompt-share of each sequence is prompt, KTO's KL pairs share it), and
times each phase between `mx.synchronize()` calls: the recorded forward (KTO's with its KL completions beside each
layer, core.prefix_kl.record_with_kl), the KL completions' output head, the backward, the update. The synchronizations cost a little, so the phases add up to slightly more than a step.
Prints one JSON object: seconds per step of each phase (median over --steps after --warmup).

    python bench/step_phases.py --size 7b --quantize 4              # on the device machine
    python bench/step_phases.py --size tiny --seq 128 --batch 4     # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="7b", choices=["tiny", "small", "7b"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--prompt-share", type=float, default=0.75)
    p.add_argument("--quantize", type=int, default=4)
    p.add_argument("--quantized-matmul", default="auto", choices=["auto", "dequantize", "kernel"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_pass import build_model, load, sequences

    from tunedeck.core import backend, layerwise, objectives, prefix_kl
    from tunedeck.core import config as C
    from tunedeck.core.step import TrainStep, compiles_update, optimizer

    args.model_dir, args.examples, args.data = build_model(args.size), args.batch * (args.warmup + args.steps), "synthetic"
    model, tok = load(args)
    seqs = sequences(args, tok)
    phases: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            mx.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            mx.eval(out)
            mx.synchronize()
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
            return out
        return run

    layerwise.record = timed("forward", layerwise.record)  # KTO: with the KL completions beside each layer
    layerwise.backward = timed("backward", layerwise.backward)
    prefix_kl._completion_logps = timed("kl_head", prefix_kl._completion_logps)
    out: dict[str, Any] = {}
    for method in ("sft", "kto"):
        cfg = C.Config()
        cfg.train.method, cfg.train.grad_checkpoint, cfg.train.compile = method, True, args.compile
        step = TrainStep(objectives.for_config(cfg), model, optimizer(cfg, 100), False,
                         compile_update=compiles_update(cfg, backend.detect().kind))
        step._update = timed("update", step._update)
        zeros = np.zeros(len(seqs), np.float32)
        rows: list[dict[str, float]] = []
        for i in range(args.warmup + args.steps):
            idx = np.arange(i * args.batch, (i + 1) * args.batch)
            batch = step.batch(seqs, idx, (zeros, zeros) if method == "kto" else None, shard=False)
            phases.clear()
            mx.synchronize()
            t0 = time.perf_counter()
            step(batch)
            mx.synchronize()
            phases["step"] = time.perf_counter() - t0
            rows.append(dict(phases))
        rows = rows[args.warmup:]
        out[method] = {k: round(statistics.median(r.get(k, 0.0) for r in rows), 4) for k in rows[0]}
    out |= {"kto_over_sft": round(out["kto"]["step"] / out["sft"]["step"], 3), "size": args.size,
            "batch": args.batch, "seq": args.seq, "prompt_share": args.prompt_share, "quantize": args.quantize,
            "device": str(mx.default_device())}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
