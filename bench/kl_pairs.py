"""Which KTO KL pairing to default to: `kto.kl_pairs = "dataset"` (a fixed derangement over the split) against
`"batch"` (TRL's rotation inside each micro-batch), on the pre-trained demo model and the bundled data.

For each seed and pairing, `tunedeck train` runs the demo preset as KTO (the weights `tunedeck config init
--data` suggests; live samples off) with validation over the whole held-out split every `--eval-every` steps.
From its events.jsonl:

- z_sd: the standard deviation of KTO's KL baseline z (the step event's `kl`) over the steps after warmup —
  how noisy the baseline the rewards are measured against is;
- z_jitter: the mean absolute change of z from one step to the next (noise, not trend); z_mean, and z_zero:
  the share of steps where the clamp max(0, ·) held z at 0;
- val_reward_accuracy / val_margin: the held-out implicit-reward accuracy (desirable reward > 0,
  undesirable < 0) and margin at the last evaluation.

Each value is reported per run and as the mean over seeds with the sample standard deviation. The last line
printed is one JSON object.

    python bench/kl_pairs.py                       # 3 seeds x 2 pairings, 200 steps each
    python bench/kl_pairs.py --seeds 0 --steps 20  # a quick check of the plumbing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_quality import cli, pretrained_demo, spread, suggest_weights  # noqa: E402

PAIRINGS = ("dataset", "batch")
METRICS = ("z_sd", "z_jitter", "z_mean", "z_zero", "val_reward_accuracy", "val_margin", "val_loss")


def write_config(ws: Path, model: str, pairing: str, seed: int, args: argparse.Namespace) -> Path:
    from tunedeck.core import config as C
    from tunedeck.core import demo

    cfg = C.preset("demo", str(demo.sample_dataset()))
    cfg.model.path = model
    cfg.train.method = "kto"
    cfg.train.iters, cfg.train.seed = args.steps, seed
    cfg.train.save_every, cfg.train.eval_every, cfg.train.eval_batches = args.steps, args.eval_every, 0
    cfg.train.sample_every = 0
    if args.lr:
        cfg.train.learning_rate = args.lr
    cfg.kto.kl_pairs = pairing
    suggest_weights(cfg, seed)
    path = ws / f"{pairing}-{seed}.toml"
    C.save(cfg, path)
    return path


def summarise(events: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    z = [e["kl"] for e in events if e["type"] == "step" and e["step"] > warmup]
    last_eval = [e for e in events if e["type"] == "eval"][-1]
    return {"z_sd": statistics.stdev(z), "z_jitter": statistics.fmean(abs(b - a) for a, b in zip(z, z[1:])),
            "z_mean": statistics.fmean(z), "z_zero": sum(v == 0 for v in z) / len(z), "val_reward_accuracy": last_eval["val_reward_accuracy"],
            "val_margin": last_eval["val_margin"], "val_loss": last_eval["val_loss"]}


def one_run(ws: Path, model: str, pairing: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = ws / f"run-{pairing}-{seed}"
    t0 = time.perf_counter()
    cli("train", str(write_config(ws, model, pairing, seed, args)), "--run-dir", str(run_dir), "--quiet",
        timeout=args.timeout)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    out = {"pairing": pairing, "seed": seed, "train_s": round(time.perf_counter() - t0, 1),
           "load": [round(x, 2) for x in os.getloadavg()], **summarise(events, 10)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (default: the demo preset's)")
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args()
    model = str(pretrained_demo(args.timeout))
    with tempfile.TemporaryDirectory(prefix="kl-pairs-") as tmp:
        runs = [one_run(Path(tmp), model, pairing, seed, args) for seed in args.seeds for pairing in PAIRINGS]
    summary = {pairing: {m: spread([r[m] for r in runs if r["pairing"] == pairing]) for m in METRICS}
               for pairing in PAIRINGS}
    print(json.dumps({"machine": os.uname().machine, "steps": args.steps, "seeds": args.seeds, "runs": runs,
                      "summary": summary}))


if __name__ == "__main__":
    main()
