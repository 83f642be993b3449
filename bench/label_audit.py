"""How well `tunedeck data audit` finds wrong labels: flip N labels of the bundled data at random, audit it, and
count the flipped examples among the audit's 2N most suspicious.

A copy of sample_data/notes_tool_use.jsonl (1,000 examples, 750 desirable / 250 undesirable) gets N labels
flipped (seeded; the flipped lines are recorded), then `tunedeck data audit CONFIG --json` runs on it with the
demo preset (model: the demo model `core.demo.ensure()` gives, or `--model random|small`; KTO weights as
`tunedeck config init --data` suggests for the flipped file) for each `--iters` value. Reported per run:

- recall_at_2n: the share of the N flipped examples among the 2N highest scores; random_recall = 2N/total is
  what a random ranking gets on average; labels_only_recall what a ranking gets that puts every
  undesirable-labelled example first (most flips are desirable examples now labelled undesirable, the minority
  label), knowing nothing else
- auc: the chance that a flipped example scores above an unflipped one (0.5 = no separation; ties count half);
  auc_given_desirable / auc_given_undesirable: the same among the examples that carry that label
- recall_desirable / recall_undesirable: recall_at_2n of the flips by the label they were given
- clean_agreement: the share of unflipped examples whose held-out reward has their label's sign (score < 0)

Raw results (settings, timings, each flipped line's rank and score, the whole ranking) go to --out; the last line printed is one
JSON object.

    nice -n 10 python bench/label_audit.py                          # the demo model, 60 steps per fold
    nice -n 10 python bench/label_audit.py --iters 10,60,250 --out bench/results/label_audit_demo.json
    nice -n 10 python bench/label_audit.py --model random --iters 60
    python bench/label_audit.py --model small --dtype float32       # on a GPU: float32, as on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "tunedeck"


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"tunedeck {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def model_dir(which: str, ws: Path) -> tuple[str, dict[str, Any]]:
    """The model to audit with, and what it is: "demo" is what `core.demo.ensure()` gives (model.path = "demo"),
    "random" the random-weight demo model, "small" random weights of the 47M `small` shape (built in `ws`)."""
    from tunedeck.core import demo

    if which == "small":
        path = ws / "small-model"
        if not (path / "config.json").is_file():
            demo.build(path, size="small")
    else:
        path = demo.ensure(random=True if which == "random" else None)
    cfg = json.loads((path / "config.json").read_text())
    pretraining = path / "pretraining.json"
    return str(path), {"which": which, "model_dir": str(path), "hidden_size": cfg["hidden_size"],
                       "layers": cfg["num_hidden_layers"], "pretrained": pretraining.is_file(),
                       "pretraining": json.loads(pretraining.read_text()) if pretraining.is_file() else None}


def flipped_copy(dest: Path, flips: int, seed: int) -> list[int]:
    """The bundled data with `flips` labels flipped (lines chosen with `seed`), written to `dest`; the lines."""
    from tunedeck.core import demo

    lines = demo.sample_dataset().read_text(encoding="utf-8").splitlines()
    chosen = sorted(random.Random(seed).sample(range(1, len(lines) + 1), flips))
    for ln in chosen:
        record = json.loads(lines[ln - 1])
        record["label"] = not record["label"]
        lines[ln - 1] = json.dumps(record, ensure_ascii=False)
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dest.parent / "tools.json").write_bytes((demo.sample_dataset().parent / "tools.json").read_bytes())
    return chosen


def write_config(ws: Path, data_path: Path, model: str, lr: float | None, dtype: str) -> Path:
    from tunedeck.core import config as C
    from tunedeck.core import data

    cfg = C.preset("demo", str(data_path))
    cfg.model.path, cfg.model.dtype = model, dtype
    if lr:
        cfg.train.learning_rate = lr
    ds = data.load(data_path)
    cfg.kto.desirable_weight, cfg.kto.undesirable_weight = data.suggest_kto_weights(ds.desirable, ds.undesirable)
    path = ws / "audit.toml"
    C.save(cfg, path)
    return path


def auc(pos: list[float], neg: list[float]) -> float | None:
    """The chance that a score of `pos` is above one of `neg` (ties count half); None if either is empty."""
    if not pos or not neg:
        return None
    neg = sorted(neg)
    wins = sum(bisect_left(neg, p) + 0.5 * (bisect_right(neg, p) - bisect_left(neg, p)) for p in pos)
    return round(wins / (len(pos) * len(neg)), 4)


def prior_recall(suspects: list[dict[str, Any]], flips: set[int]) -> float:
    """The expected recall in the top 2N of a ranking that knows only the labels: every undesirable-labelled
    example first (in random order), then the desirable-labelled ones."""
    n = len(flips)
    undesirable = [s["line"] for s in suspects if not s["label"]]
    f_u = sum(ln in flips for ln in undesirable)
    if 2 * n <= len(undesirable):
        return round(2 * n / len(undesirable) * f_u / n, 4)
    rest = len(suspects) - len(undesirable)
    return round((f_u + (2 * n - len(undesirable)) / rest * (n - f_u)) / n, 4)


def measure(suspects: list[dict[str, Any]], flipped: list[int]) -> dict[str, Any]:
    """Recall of the flipped lines in the top 2N against a random and a labels-only ranking, AUC (overall and
    within each given label), recall by given label, and the clean examples' agreement with their labels."""
    n, total = len(flipped), len(suspects)
    flips = set(flipped)
    top = {s["line"] for s in suspects[: 2 * n]}
    bad = [s for s in suspects if s["line"] in flips]
    clean = [s for s in suspects if s["line"] not in flips]

    def recall(label: bool) -> float | None:
        given = [s["line"] for s in bad if s["label"] is label]
        return round(sum(ln in top for ln in given) / len(given), 4) if given else None

    def within(label: bool) -> float | None:
        return auc([s["score"] for s in bad if s["label"] is label], [s["score"] for s in clean if s["label"] is label])

    return {"flips": n, "total": total, "recall_at_2n": round(len(top & flips) / n, 4),
            "random_recall": round(2 * n / total, 4), "labels_only_recall": prior_recall(suspects, flips),
            "auc": auc([s["score"] for s in bad], [s["score"] for s in clean]),
            "auc_given_desirable": within(True), "auc_given_undesirable": within(False),
            "recall_desirable": recall(True), "recall_undesirable": recall(False),
            "flipped_given_desirable": sum(s["label"] for s in bad),
            "clean_agreement": round(sum(s["score"] < 0 for s in clean) / len(clean), 4),
            "flipped": [{"line": s["line"], "rank": s["rank"], "label": s["label"], "score": s["score"]} for s in bad],
            "ranking": [[s["line"], s["label"], s["score"]] for s in suspects]}


def run(args: argparse.Namespace, iters: int, model: str, ws: Path, flipped: list[int], config: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    audit_dir = ws / f"audit-{iters}"
    reused = (audit_dir / "audit.json").is_file()  # finished by an earlier run of this bench: its time is not known
    out = cli("data", "audit", str(config), "--folds", str(args.folds), "--iters", str(iters), "--json",
              "--audit-dir", str(audit_dir), timeout=args.timeout)
    result = json.loads(out.stdout)
    m = measure(result["suspects"], flipped)
    first = json.loads((audit_dir / "fold-1" / "events.jsonl").read_text().splitlines()[0])["time"]
    m.update(iters=iters, folds=args.folds, seconds=None if reused else round(time.perf_counter() - t0, 1),
             audit_seconds=round(result["time"] - first, 1),  # fold 1's first event to the results (known when reused)
             load=round(os.getloadavg()[0], 2), beta=result["beta"], model_dir=result["model_dir"])
    print(f"iters {iters}: recall@2N {m['recall_at_2n']} (random {m['random_recall']}, labels only "
          f"{m['labels_only_recall']}), AUC {m['auc']} ({m['auc_given_desirable']} / {m['auc_given_undesirable']}), "
          f"clean agreement {m['clean_agreement']}, {m['audit_seconds']} s, load {m['load']}", file=sys.stderr, flush=True)
    return m


def machine() -> str:
    """Where this ran: the backend tunedeck picks, and the CPU count."""
    from tunedeck.core import backend

    return f"{backend.detect().note}; {os.cpu_count()} CPUs"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["demo", "random", "small"], default="demo",
                   help="demo: what core.demo.ensure() gives; random: the random-weight demo model; small: random "
                        "weights of the 47M shape")
    p.add_argument("--flips", type=int, default=50, help="labels flipped (N; default 50 of 1,000)")
    p.add_argument("--seed", type=int, default=0, help="which labels are flipped")
    p.add_argument("--iters", default="60", help="steps per fold, comma-separated (one audit each)")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--lr", type=float, help="learning rate (default: the demo preset's)")
    p.add_argument("--dtype", default="auto", help="model.dtype (auto: float32 on a CPU, bfloat16 on a GPU)")
    p.add_argument("--work", help="working directory (default: a temporary one, kept)")
    p.add_argument("--out", help="write the raw results here (JSON)")
    p.add_argument("--timeout", type=float, default=6 * 3600)
    args = p.parse_args()
    ws = Path(args.work or tempfile.mkdtemp(prefix="label-audit-"))
    ws.mkdir(parents=True, exist_ok=True)
    model, about = model_dir(args.model, ws)
    flipped = flipped_copy(ws / "flipped.jsonl", args.flips, args.seed)
    config = write_config(ws, ws / "flipped.jsonl", model, args.lr, args.dtype)
    runs = [run(args, int(i), model, ws, flipped, config) for i in args.iters.split(",")]
    summary = {"bench": "label_audit", "model": about, "flip_seed": args.seed, "flipped_lines": flipped,
               "learning_rate": args.lr or "demo preset (1e-4)", "dtype": args.dtype, "machine": machine(),
               "work": str(ws), "runs": runs}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print("| steps per fold | recall of flips in top 2N | random ranking | labels only | AUC | AUC given desirable "
          "| AUC given undesirable | audit seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['iters']} | {r['recall_at_2n']:.2f} | {r['random_recall']:.2f} | {r['labels_only_recall']:.2f} | "
              f"{r['auc']:.2f} | {r['auc_given_desirable']} | {r['auc_given_undesirable']} | "
              f"{r['audit_seconds']:.0f} |")
    print(json.dumps({**summary, "runs": [{k: v for k, v in r.items() if k not in ("flipped", "ranking")} for r in runs]}))


if __name__ == "__main__":
    main()
