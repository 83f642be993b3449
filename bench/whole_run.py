"""Peak memory of each phase of a whole training run: loading, the KTO reference pass, the steps, validation.

Runs the trainer (core.trainer.Trainer) in this process on a preset (default the shipped Mac-24GB one: 7B
4-bit KTO, batch 4, layer-by-layer checkpointing) with the model replaced by a random-weight one of --size and
the bundled data's first --examples examples, resetting MLX's peak counter before each phase and reading it
after. The issue this answers: does validation or the reference pass set the run's peak, above its steps?
The last line printed is one JSON object (GB, seconds).

    python bench/whole_run.py --size 7b --examples 300      # on the device machine
    python bench/whole_run.py --size tiny --examples 64     # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

GB = 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="7b", choices=["tiny", "small", "7b"])
    p.add_argument("--preset", default="mac-24gb")
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--eval-every", type=int, default=3)
    p.add_argument("--quantized-matmul", default="auto", choices=["auto", "dequantize", "kernel"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="train.compile")
    p.add_argument("--no-grad-checkpoint", action="store_true", help="train.grad_checkpoint = false")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_pass import build_model

    from tunedeck.core import config as C
    from tunedeck.core import demo, run_prep, runs, step, trainer

    peaks: dict[str, list[float]] = {"load": [], "reference": [], "step": [], "eval": []}
    seconds: dict[str, float] = {"reference": 0.0, "eval": 0.0, "step": 0.0}

    def phase(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            mx.synchronize()
            if name == "reference":  # what came before it: loading the model
                peaks["load"].append(mx.get_peak_memory() / GB)
            mx.reset_peak_memory()
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                mx.synchronize()
                peaks[name].append(mx.get_peak_memory() / GB)
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
                mx.reset_peak_memory()
        return wrapped

    trainer.reference_pass = phase("reference", trainer.reference_pass)
    trainer.Trainer._evaluate = phase("eval", trainer.Trainer._evaluate)
    step.TrainStep.__call__ = phase("step", step.TrainStep.__call__)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        lines = demo.sample_dataset().read_text(encoding="utf-8").splitlines(keepends=True)
        data.write_text("".join(lines[: args.examples]), encoding="utf-8")
        cfg = C.preset(args.preset, str(data))
        cfg.model.path, cfg.model.quantized_matmul = build_model(args.size), args.quantized_matmul
        t = cfg.train
        t.compile = args.compile
        t.grad_checkpoint = t.grad_checkpoint and not args.no_grad_checkpoint
        t.iters, t.eval_every, t.save_every, t.sample_every, t.warmup_steps = args.iters, args.eval_every, 10**6, 0, 0
        run_dir = run_prep.prepare_run(cfg, None, Path(tmp) / "runs")
        mx.reset_peak_memory()
        code = trainer.Trainer(run_dir).run()
        events = runs.read_events(run_dir)
    if code != 0:
        raise SystemExit(f"the run failed: {events[-1]}")
    steps = [e for e in events if e["type"] == "step"]
    out = {name: round(max(v), 3) if v else None for name, v in peaks.items()}
    out["whole_run"] = round(max(max(v) for v in peaks.values() if v), 3)
    out["whole_over_step"] = round(out["whole_run"] / out["step"], 3)
    out |= {"reference_seconds": round(seconds["reference"], 1), "eval_seconds": round(seconds["eval"], 1),
            "step_seconds": round(seconds["step"], 1), "step_times": [round(e["step_time"], 3) for e in steps],
            "compile": args.compile, "grad_checkpoint": t.grad_checkpoint,
            "step_time": sorted(e["step_time"] for e in steps)[len(steps) // 2],
            "trained_tokens_per_sec": sorted(e["tokens_per_sec"] for e in steps)[len(steps) // 2],
            "examples": args.examples, "size": args.size, "preset": args.preset,
            "quantized_matmul": args.quantized_matmul, "backend": next(e for e in events if e["type"] == "start")["backend"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
