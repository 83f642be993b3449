"""What KTO buys on the demo: the base model, an SFT adapter and a KTO adapter on the bundled data's held-out split.

Builds (or reuses) the pre-trained demo model (what `tunedeck demo-model` builds), then for each seed trains an SFT and a
KTO adapter with the demo preset (same steps, seed, learning rate and LoRA settings; `tunedeck train`) and
scores base and adapter with `tunedeck eval` (core/evaluate.py) on that seed's held-out split (the trainer's
`data.valid_fraction` split, which depends on the seed). KTO uses the weights `tunedeck config init --data`
suggests for the training split (the KTO paper's rule). Per model, over the held-out desirable prompts whose
reference answer is a tool call (greedy answers):

- well_formed: the answer is a tool call in the data's format (valid JSON, a "name", an "arguments" object)
- tool_name_match: it names the reference's tool
- schema_valid: it is a valid call: known tool, required arguments present, argument types per tools.json
  (`tunedeck eval`'s "tool call well-formed")

and over every held-out example: loss (mean NLL per completion token, desirable examples), loss_undesirable,
and, for the adapters, KTO's implicit reward β·(log π − log π_base): reward_accuracy (its sign matches the
label) and reward_margin (desirable minus undesirable mean). Each value is the mean over seeds with the
sample standard deviation (the seed-to-seed spread) and the min/max. The last line printed is one JSON object.

    python bench/demo_quality.py                         # 3 seeds x (SFT, KTO), 200 steps each
    python bench/demo_quality.py --seeds 0 --steps 10    # a quick check of the plumbing
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
WELL_FORMED = {"ok", "unknown_tool", "missing_argument", "wrong_type"}  # codes of answers that parse as a call
METRICS = ["well_formed", "tool_name_match", "schema_valid", "reward_accuracy", "reward_margin", "loss",
           "loss_undesirable"]
LABELS = {
    "well_formed": "well-formed tool call",
    "tool_name_match": "calls the reference's tool",
    "schema_valid": "arguments valid for the schema",
    "reward_accuracy": "KTO reward accuracy",
    "reward_margin": "KTO reward margin",
    "loss": "completion loss, desirable (/token)",
    "loss_undesirable": "completion loss, undesirable (/token)",
}
MODELS = ("base", "sft", "kto")
PAIRS = (("sft", "base"), ("kto", "base"), ("kto", "sft"))  # paired differences, per seed
PERCENT = {"well_formed", "tool_name_match", "schema_valid", "reward_accuracy"}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pretrained_demo(timeout: float) -> Path:
    """The pre-trained demo model in the user cache, built if needed (its progress on stderr) in a child
    process with OpenBLAS preloaded on a Linux CPU, as `tunedeck` itself runs (MLX is ~5x slower without)."""
    from tunedeck.core import backend

    code = "from tunedeck.core import demo; print(demo.ensure(random=False))"
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, timeout=timeout,
                       env=backend.subprocess_env())
    if r.returncode != 0:
        raise SystemExit(f"building the pre-trained demo model failed ({r.returncode})")
    return Path(r.stdout.strip().splitlines()[-1])


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"tunedeck {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def suggest_weights(cfg: Any, seed: int) -> None:
    """Set the KTO weights `tunedeck config init --data` suggests for the bundled data's training split."""
    from tunedeck.core import data, demo

    train, _ = data.split(data.load(demo.sample_dataset()).examples, cfg.data.valid_fraction, seed)
    nd = sum(e.label for e in train)
    cfg.kto.desirable_weight, cfg.kto.undesirable_weight = data.suggest_kto_weights(nd, len(train) - nd)


def write_config(ws: Path, model: str, method: str, seed: int, args: argparse.Namespace) -> Path:
    from tunedeck.core import config as C
    from tunedeck.core import demo

    cfg = C.preset("demo", str(demo.sample_dataset()))
    cfg.model.path = model
    cfg.train.method = method
    cfg.train.iters = args.steps
    cfg.train.seed = seed
    cfg.train.save_every = cfg.train.eval_every = args.steps
    cfg.train.eval_batches = 1
    if args.lr:
        cfg.train.learning_rate = args.lr
    suggest_weights(cfg, seed)
    path = ws / f"{method}-{seed}.toml"
    C.save(cfg, path)
    return path


def scores(report: dict[str, Any], which: str) -> dict[str, float | None]:
    """The bench's metrics for one model ("base" or "adapter") of an eval report."""
    m = report["metrics"]
    calls = [g[which]["code"] for g in report["generations"] if g["reference_tool"] is not None]
    return {
        "well_formed": sum(c in WELL_FORMED for c in calls) / len(calls) if calls else None,
        "tool_name_match": m["tool_name_match"][which],
        "schema_valid": m["tool_call_valid"][which],
        "reward_accuracy": m["reward_accuracy"][which],
        "reward_margin": m["reward_margin"][which],
        "loss": m["loss"][which],
        "loss_undesirable": m["loss_undesirable"][which],
    }


def train_and_eval(ws: Path, model: str, method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    config = write_config(ws, model, method, seed, args)
    run_dir = ws / f"run-{method}-{seed}"
    t0 = time.perf_counter()
    cli("train", str(config), "--run-dir", str(run_dir), "--quiet", timeout=args.timeout)
    t1 = time.perf_counter()
    cli("eval", str(run_dir), "--max-tokens", str(args.max_tokens), "--json", timeout=args.timeout)
    report = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    out = {"method": method, "seed": seed, "train_s": round(t1 - t0, 1),
           "eval_s": round(time.perf_counter() - t1, 1), "load": load(),
           "held_out": {"examples": report["examples"], "desirable": report["desirable"],
                        "undesirable": report["undesirable"], "call_prompts": report["tool_use"]["reference_calls"]},
           "base": scores(report, "base"), "adapter": scores(report, "adapter"),
           "example": next((g for g in report["generations"] if g["reference_tool"]), None)}
    print(f"{method} seed {seed}: train {out['train_s']} s, eval {out['eval_s']} s, load {out['load']}: "
          f"{json.dumps(out['adapter'])}", file=sys.stderr, flush=True)
    return out


def spread(values: list[float | None]) -> dict[str, float | None]:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def cell(key: str, s: dict[str, float | None], signed: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    sign = "+" if signed else ""
    if key in PERCENT:
        return f"{100 * s['mean']:{sign}.1f}{' pp' if signed else '%'} ± {100 * s['sd']:.1f}"
    return f"{s['mean']:{sign}.3f} ± {s['sd']:.3f}"


def by_seed(runs: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, float | None]]]:
    """Per seed, the scores of the base (from the KTO run's eval) and of both adapters."""
    out: dict[int, dict[str, dict[str, float | None]]] = {}
    for r in runs:
        out.setdefault(r["seed"], {})[r["method"]] = r["adapter"]
        if r["method"] == "kto":
            out[r["seed"]]["base"] = r["base"]
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean ± seed-to-seed sd of each model's scores, and of the paired differences ("kto-base": per seed,
    on that seed's split, KTO adapter minus base), which leave out the spread that the splits cause."""
    seeds = list(by_seed(runs).values())
    out = {m: {k: spread([s[m][k] for s in seeds]) for k in METRICS} for m in MODELS}
    for a, b in PAIRS:
        out[f"{a}-{b}"] = {k: spread([s[a][k] - s[b][k] if s[a][k] is not None and s[b][k] is not None else None
                                      for s in seeds]) for k in METRICS}
    return out


def table(summary: dict[str, dict[str, dict[str, float | None]]]) -> str:
    names = {"base": "base", "sft": "SFT adapter", "kto": "KTO adapter"}
    head = [names[m] for m in MODELS] + [f"{names[a].split()[0]} − {names[b].split()[0]}" for a, b in PAIRS]
    rows = ["| metric | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for key in METRICS:
        cells = [cell(key, summary[m][key]) for m in MODELS]
        cells += [cell(key, summary[f"{a}-{b}"][key], signed=True) for a, b in PAIRS]
        rows.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default 0,1,2)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each adapter (default 200)")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (default: the demo preset's)")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per generated answer (default 96)")
    p.add_argument("--model", help="base model directory (default: the pre-trained demo model, built if needed)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary directory")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0, load_start = time.perf_counter(), load()
    model = args.model or str(pretrained_demo(args.timeout))
    build_s = round(time.perf_counter() - t0, 1)
    pretraining = Path(model) / "pretraining.json"
    with tempfile.TemporaryDirectory(prefix="tunedeck-demo-quality-") as tmp:
        ws = Path(args.keep or tmp)
        ws.mkdir(parents=True, exist_ok=True)
        runs = [train_and_eval(ws, model, method, seed, args) for seed in seeds for method in ("sft", "kto")]
    summary = summarize(runs)
    held_out = [r["held_out"] for r in runs if r["method"] == "kto"]
    print(table(summary), file=sys.stderr)
    result = {"model": model, "steps": args.steps, "seeds": seeds, "max_tokens": args.max_tokens,
              "held_out_per_seed": held_out, "summary": summary, "table": table(summary),
              "base_same_for_sft_and_kto": all(a["base"] == b["base"] for a, b in zip(runs[::2], runs[1::2])),
              "build_s": build_s, "pretraining": json.loads(pretraining.read_text()) if pretraining.is_file() else None,
              "seconds": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count(),
              "load_start": load_start, "load_end": load(),
              "runs": runs}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
