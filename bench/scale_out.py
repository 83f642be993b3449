"""Data-parallel scale-out: `tunedeck train --workers N` against one process at the same global batch.

Builds the demo "small" model (~47M params; `tunedeck demo-model DIR --size small`), trains SFT on the
bundled sample data with the same config and global batch for each worker count, and reports trained
tokens/s (median over the steps after --warmup, from the step events), wall time, the speedup over one
worker, whether the per-step losses agree, and the machine's load average before and after each run
(other work on the machine takes cores from the workers). The last line printed is one JSON object.

    python bench/scale_out.py                     # 1 vs 2 workers, demo "small" model
    python bench/scale_out.py --workers 1,2,4 --batch 8 --steps 12
    python bench/scale_out.py --size tiny --steps 4   # a quick check of the plumbing

On one machine, N workers split its cores (OPENBLAS_NUM_THREADS = cores // N each), so the ideal is
the speedup of N single-threaded processes over one multi-threaded BLAS: it pays where one process
cannot keep every core busy (small matmuls, Python overhead), and costs an all-reduce of the LoRA
gradients per step. Across Macs (--hosts), each worker brings its own GPU and memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "tunedeck"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build_model(size: str, dest: Path) -> Path:
    if not (dest / "config.json").is_file():
        subprocess.run([str(BIN), "demo-model", str(dest), "--size", size], check=True, capture_output=True)
    return dest


def write_config(ws: Path, model: Path, args: argparse.Namespace) -> Path:
    from tunedeck.core import config as C
    from tunedeck.core import demo

    cfg = C.preset("demo", str(demo.sample_dataset()))
    cfg.model.path = str(model)
    cfg.train.method = "sft"
    cfg.train.batch_size = args.batch
    cfg.train.iters = args.warmup + args.steps
    cfg.train.warmup_steps = 1
    cfg.train.learning_rate = 1e-4
    cfg.train.save_every = 10_000  # only the final checkpoint: time the steps, not the disk
    cfg.train.eval_every = 10_000
    cfg.train.eval_batches = 1
    cfg.data.max_seq_len = args.seq
    cfg.data.valid_fraction = 0.05
    cfg.lora.rank = args.rank
    cfg.lora.dropout = 0.0  # so that the runs' losses can be compared step by step
    path = ws / "tunedeck.toml"
    C.save(cfg, path)
    return path


def run(config: Path, workers: int, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tunedeck.core import runs

    cmd = [str(BIN), "train", str(config), "--run-dir", str(run_dir), "--quiet"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    before = load()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{workers} worker(s) failed:\n{r.stderr}\n" + "\n".join(runs.tail_log(run_dir, 30)))
    events = runs.read_events(run_dir)
    steps = [e for e in events if e["type"] == "step"]
    timed = steps[args.warmup :] or steps
    start = next(e for e in events if e["type"] == "start")
    return {
        "workers": workers,
        "tokens_per_sec": round(statistics.median(e["tokens_per_sec"] for e in timed), 1),
        "tokens_per_sec_per_worker": round(statistics.median(e["tokens_per_sec_per_worker"] for e in timed), 1),
        "step_time_median": round(statistics.median(e["step_time"] for e in timed), 3),
        "train_seconds": round(sum(e["step_time"] for e in timed), 2),
        "wall_seconds": round(wall, 1),  # includes process start, model load, ring set-up, final checkpoint
        "load_before": before,
        "load_after": load(),
        "losses": [e["loss"] for e in steps],
        "trainable_params": start.get("trainable_params"),
        "total_params": start.get("total_params"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--batch", type=int, default=8, help="global batch (a multiple of every worker count)")
    p.add_argument("--seq", type=int, default=256, help="data.max_seq_len")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary directory")
    args = p.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    if any(args.batch % n for n in counts):
        raise SystemExit(f"--batch {args.batch} must be a multiple of every worker count {counts}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="tunedeck-scale-") as tmp:
        ws = Path(args.keep or tmp)
        ws.mkdir(parents=True, exist_ok=True)
        model = build_model(args.size, ws / f"model-{args.size}")
        config = write_config(ws, model, args)
        results = []
        for n in counts:
            res = run(config, n, ws / f"run-{n}w-{int(time.time())}", args)
            results.append(res)
            print(f"{n} worker(s): {res['tokens_per_sec']:.0f} tok/s ({res['tokens_per_sec_per_worker']:.0f}/worker), "
                  f"median step {res['step_time_median']:.2f} s, wall {res['wall_seconds']:.0f} s, "
                  f"load {res['load_before']} -> {res['load_after']}", flush=True)
    base = results[0]
    for res in results:
        res["speedup"] = round(res["tokens_per_sec"] / base["tokens_per_sec"], 3)
        n = min(len(res["losses"]), len(base["losses"]))
        res["max_rel_loss_diff_vs_first"] = max(
            (abs(a - b) / abs(b) for a, b in zip(res["losses"][:n], base["losses"][:n])), default=0.0)
    for res in results:
        res.pop("losses")
    summary = {"size": args.size, "batch": args.batch, "seq": args.seq, "steps": args.steps, "cpus": os.cpu_count(),
               "results": results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
