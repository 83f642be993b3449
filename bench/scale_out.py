"""Data-parallel scale-out: `tunedeck train --workers N` against one process at the same global batch.

Builds the demo "small" model (~47M params; `tunedeck demo-model DIR --size small --random`), trains SFT on the
bundled sample data with the same config and global batch for each worker count, and reports trained
tokens/s (median over the steps after --warmup, from the step events), wall time, the speedup over one
worker, whether the per-step losses agree, and the machine's load average before and after each run
(other work on the machine takes cores from the workers). The last line printed is one JSON object.

    python bench/scale_out.py                     # 1 vs 2 workers, demo "small" model
    python bench/scale_out.py --workers 1,2,4 --batch 8 --steps 12
    python bench/scale_out.py --size tiny --steps 4   # a quick check of the plumbing

On an NVIDIA host, N workers are N GPUs over NCCL (`tunedeck train --workers N`). The multi-GPU
measurement: the random-weight Mistral-7B-v0.3 shape in bf16, LoRA r16 on q,v, 4 sequences of 2048
tokens per GPU (weak scaling: global batch 4 on 1 GPU, 8 on 2), plus a 1-GPU run at the 2-GPU run's
global batch (with gradient checkpointing, to fit) whose per-step losses the 2-GPU run must match:

    python bench/scale_out.py --size 7b --data long --seq 2048 --per-worker-batch 4 --keys q_proj,v_proj \
        --rank 16 --workers 1,2 --match-loss --steps 8 --warmup 2

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
        subprocess.run([str(BIN), "demo-model", str(dest), "--size", size, "--random"], check=True, capture_output=True)
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
    if args.data == "long":
        cfg.data.path = str(long_dataset(ws, args.seq))
    cfg.lora.rank = args.rank
    if args.keys:
        cfg.lora.keys = args.keys.split(",")
    cfg.lora.dropout = 0.0  # so that the runs' losses can be compared step by step
    path = ws / "tunedeck.toml"
    C.save(cfg, path)
    return path


def long_dataset(ws: Path, seq: int, n: int = 256) -> Path:
    """Prompt/completion examples whose completions run past max_seq_len: every sequence is `seq` tokens."""
    import random

    rng = random.Random(0)
    words = "tool call result query weather calendar search note file open read write list user answer".split()
    path = ws / "long.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Task {i}: " + " ".join(rng.choices(words, k=8)),
                                        "completion": " ".join(rng.choices(words, k=seq))}) + "\n"
                            for i in range(n)))
    return path


def run(config: Path, workers: int, run_dir: Path, args: argparse.Namespace, batch: int,
        grad_checkpoint: bool = False) -> dict[str, Any]:
    from tunedeck.core import runs

    cmd = [str(BIN), "train", str(config), "--run-dir", str(run_dir), "--quiet", "--set",
           f"train.batch_size={batch}", "--set", f"train.grad_checkpoint={str(grad_checkpoint).lower()}"]
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
        "global_batch": batch,
        "grad_checkpoint": grad_checkpoint,
        "peak_memory_gb_rank0": max(e["peak_memory_gb"] for e in steps),
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


def report(res: dict[str, Any]) -> None:
    print(f"{res['workers']} worker(s), global batch {res['global_batch']}{' (grad checkpointing)' if res['grad_checkpoint'] else ''}: "
          f"{res['tokens_per_sec']:.0f} tok/s ({res['tokens_per_sec_per_worker']:.0f}/worker), median step "
          f"{res['step_time_median']:.2f} s, peak {res['peak_memory_gb_rank0']:.1f} GB (rank 0), wall "
          f"{res['wall_seconds']:.0f} s, load {res['load_before']} -> {res['load_after']}", flush=True)


def loss_diff(a: list[float], b: list[float]) -> float:
    n = min(len(a), len(b))
    return round(max((abs(x - y) / abs(y) for x, y in zip(a[:n], b[:n])), default=0.0), 6)


def device_name() -> str:
    from tunedeck.core.backend import detect

    kind = detect().kind
    if kind == "cuda":
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        names = out.stdout.split("\n")
        return f"{len([n for n in names if n.strip()])} x {names[0].strip()}"
    return f"{kind}, {os.cpu_count()} cores"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small", "7b"])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--batch", type=int, default=8, help="global batch (a multiple of every worker count)")
    p.add_argument("--per-worker-batch", type=int, default=0,
                   help="weak scaling: global batch = this x workers (overrides --batch)")
    p.add_argument("--match-loss", action="store_true",
                   help="also run 1 worker at the largest run's global batch (gradient checkpointing on) and "
                        "compare its per-step losses with that run's")
    p.add_argument("--data", default="sample", choices=["sample", "long"],
                   help="sample: the bundled dataset; long: synthetic sequences that fill --seq")
    p.add_argument("--keys", default="", help="LoRA keys, comma-separated (default: the preset's)")
    p.add_argument("--seq", type=int, default=256, help="data.max_seq_len")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary directory")
    args = p.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    batches = {n: args.per_worker_batch * n if args.per_worker_batch else args.batch for n in counts}
    if any(batches[n] % n for n in counts):
        raise SystemExit(f"--batch {args.batch} must be a multiple of every worker count {counts}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="tunedeck-scale-") as tmp:
        ws = Path(args.keep or tmp)
        ws.mkdir(parents=True, exist_ok=True)
        model = build_model(args.size, ws / f"model-{args.size}")
        config = write_config(ws, model, args)
        results = []
        for n in counts:
            res = run(config, n, ws / f"run-{n}w-{int(time.time())}", args, batches[n])
            results.append(res)
            report(res)
        match = None
        if args.match_loss:
            top = max(counts)
            match = run(config, 1, ws / f"run-1w-match-{int(time.time())}", args, batches[top], grad_checkpoint=True)
            report(match)
    base = results[0]
    for res in results:
        res["speedup"] = round(res["tokens_per_sec"] / base["tokens_per_sec"], 3)
        res["scaling_efficiency"] = round(res["speedup"] / (res["workers"] / base["workers"]), 3)  # ideal: N x
        if res["global_batch"] == base["global_batch"]:
            res["max_rel_loss_diff_vs_first"] = loss_diff(res["losses"], base["losses"])
    summary = {"size": args.size, "global_batches": batches, "seq": args.seq, "steps": args.steps,
               "cpus": os.cpu_count(), "device": device_name(), "results": results}
    if match is not None:
        top = next(r for r in results if r["workers"] == max(counts))
        summary["loss_match"] = {"workers": top["workers"], "global_batch": match["global_batch"],
                                 "max_rel_loss_diff": loss_diff(top["losses"], match["losses"]),
                                 "losses_multi": top["losses"], "losses_single": match["losses"],
                                 "single_peak_memory_gb": match["peak_memory_gb_rank0"]}
        match.pop("losses")
    for res in results:
        res.pop("losses")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
