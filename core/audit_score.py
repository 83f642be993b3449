"""Scoring a label audit: each fold's held-out examples through its adapter and through the base model, and
the results file that ranks every example of the dataset.

```
AUDIT_DIR/data/fold-N.scores.json   fold N's log-probs and rewards, with the sha256 of the adapter and the
                                    held-out file they were computed from (reused while both are unchanged)
AUDIT_DIR/audit.json                the results: the settings, and every example ranked most suspicious first
```

The implicit reward of an example is KTO's, r = β·(log π(y|x) − log π_ref(y|x)): sequence log-probs summed
over the completion tokens (the last assistant turn, and its end-of-turn token, exactly as KTO trains on
them), π = the fold's adapter, π_ref = the base model (the adapter switched off, which is what the fold's
fresh adapter started as).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import data
from .audit_plan import DATA_DIR, AuditError, Plan, fold_dir, fold_file
from .fsutil import atomic_write_text, sha256_file

if TYPE_CHECKING:  # NumPy only for the annotations: the app imports this module (core.audit) at start-up
    import numpy as np

RESULTS = "audit.json"
PREVIEW_CHARS = 120  # of each completion, kept in audit.json for the lists that show suspects
SCORE_MEANING = ("higher = more suspicious: score = -reward for a desirable example, +reward for an undesirable "
                 "one, where reward = beta * (log p_adapter(completion) - log p_base(completion)) under the adapter "
                 "of a fold that did not train on the example")


def scores_file(audit_dir: Path, fold: int) -> Path:
    return audit_dir / DATA_DIR / f"fold-{fold}.scores.json"


def suspicion(label: bool, reward: float) -> float:
    """How suspicious a label is given its held-out reward (higher = more): −r if desirable, +r if undesirable."""
    return -reward if label else reward


def score_fold(audit_dir: Path, plan: Plan, fold: int) -> dict[str, Any]:
    """Fold `fold`'s held-out examples scored with its trained adapter ({lines, logps, ref_logps, rewards,
    model_dir}),
    from its scores file when that was computed from the same adapter and held-out file, else computed and
    written there (atomically)."""
    from .model import ADAPTER_FILE  # MLX: not at import (the app imports core.audit at start-up)

    run_dir, heldout = fold_dir(audit_dir, fold), fold_file(audit_dir, fold, "heldout")
    key = {"adapter_sha256": sha256_file(run_dir / "adapters" / ADAPTER_FILE), "heldout_sha256": sha256_file(heldout)}
    path = scores_file(audit_dir, fold)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if {k: cached.get(k) for k in key} == key and cached.get("lines") == plan.fold_lines(fold):
            return cached
    except (OSError, ValueError, AttributeError):
        pass
    logps, ref, model_dir = _logps(run_dir, heldout, plan)
    if len(logps) != len(plan.fold_lines(fold)):
        raise AuditError(f"{heldout}: {len(logps)} examples, but fold {fold} holds {len(plan.fold_lines(fold))}")
    rewards = plan.beta * (logps.astype("float64") - ref.astype("float64"))
    scored = {**key, "lines": plan.fold_lines(fold), "logps": logps.tolist(), "ref_logps": ref.tolist(),
              "rewards": rewards.tolist(), "model_dir": model_dir}
    atomic_write_text(path, json.dumps(scored) + "\n")
    return scored


def _logps(run_dir: Path, heldout: Path, plan: Plan) -> tuple[np.ndarray, np.ndarray, str]:
    """Summed completion log-probs of the held-out file's examples, with the run's adapter and with it off, and
    the base model's directory."""
    from .batching import tokenize
    from .evaluate import load_run_model
    from .model import adapters_disabled
    from .reference import compute

    rm = load_run_model(run_dir)
    cfg = rm.cfg
    ds = data.load(heldout, plan.format, strict=True, tools=plan.tools or None)
    seqs = tokenize(rm.tokenizer, ds.examples, cfg.data.max_seq_len, False, cfg.train.seed,
                    string_format=cfg.data.string_format)  # the last assistant turn, as KTO trains on it
    batch = max(1, cfg.train.batch_size * 2)
    logps = compute(rm.model, seqs.ids, seqs.starts, batch)
    with adapters_disabled(rm.model):
        ref = compute(rm.model, seqs.ids, seqs.starts, batch)
    return logps, ref, str(rm.model_dir)


def ranked(plan: Plan, scored: list[dict[str, Any]], previews: dict[int, str]) -> list[dict[str, Any]]:
    """Every example of the plan as {rank, line, label, score, reward, fold, preview}, most suspicious first
    (ties by line)."""
    labels = {line: label for line, label, _ in plan.examples}
    rows = []
    for fold, s in enumerate(scored, start=1):
        for line, reward in zip(s["lines"], s["rewards"]):
            rows.append({"line": line, "label": labels[line], "score": suspicion(labels[line], reward),
                         "reward": reward, "fold": fold, "preview": previews.get(line, "")})
    rows.sort(key=lambda r: (-r["score"], r["line"]))
    return [{"rank": i, **r} for i, r in enumerate(rows, start=1)]


def previews(audit_dir: Path, plan: Plan) -> dict[int, str]:
    """The start of each example's completion, by its dataset line (read from the folds' held-out files)."""
    out: dict[int, str] = {}
    for fold in range(1, plan.folds + 1):
        ds = data.load(fold_file(audit_dir, fold, "heldout"), plan.format, strict=True, tools=plan.tools or None)
        for line, ex in zip(plan.fold_lines(fold), ds.examples):
            out[line] = ex.completion[:PREVIEW_CHARS]
    return out


def write_results(audit_dir: Path, plan: Plan, scored: list[dict[str, Any]]) -> dict[str, Any]:
    """audit.json (atomically): the settings, what the score means, and every example ranked."""
    settings = {k: v for k, v in asdict(plan).items() if k not in ("examples", "config")}
    results = {"plan_key": plan.key, **settings, "model_dir": scored[0]["model_dir"],
               "examples": len(plan.examples), "score_meaning": SCORE_MEANING, "time": round(time.time(), 3),
               "suspects": ranked(plan, scored, previews(audit_dir, plan))}
    atomic_write_text(audit_dir / RESULTS, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results
