"""Label audit: which desirable/undesirable labels of a dataset look wrong to a model that did not train on them.

K-fold cross-fitting (K = 2 by default): the examples are split into K folds (stratified by label, seeded by
train.seed); for each fold a short KTO adapter is trained on the other K−1 folds, then every example of the
fold is scored by its implicit reward under that adapter, r = β·(log π(y|x) − log π_ref(y|x)) (summed
completion log-probs; π_ref = the base model). KTO raises r on what looks desirable and lowers it on what
looks undesirable, so an example whose held-out reward disagrees with its label is a suspect:

    score = −r for a desirable example, +r for an undesirable one; higher = more suspicious.

Every example is scored exactly once, by the one fold that held it out. The folds are normal run directories
(core.rundir) trained by the detached trainer, driven one after another by a detached process
(core.audit_driver), so an audit survives a dropped SSH link and, started again, keeps its finished folds and
resumes the others. Layout: core.audit_plan (the plan and the folds' data), core.audit_score (audit.json).

For the front ends:

    start_audit(source, folds=2) -> audit_dir   check the input, write the plan, start (or rejoin) the driver
    audit_status(audit_dir) -> AuditStatus      running | done | stopped | failed | incomplete, and each fold
    load_results(audit_dir) -> list[Suspect]    every example, most suspicious first
    stop_audit(audit_dir)                       stop the fold being trained (it checkpoints), then the driver
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import events as ev
from . import runlock, runs
from .audit_driver import START_TIMEOUT, STOP_TIMEOUT, read_state, spawn
from .audit_plan import (
    DEFAULT_FOLDS,
    AuditError,
    Plan,
    check_plan,
    fold_dir,
    load_dataset,
    make_plan,
    read_plan,
    source_config,
    write_plan,
)
from .audit_score import RESULTS, SCORE_MEANING
from .fsutil import read_regular

__all__ = ["DEFAULT_FOLDS", "SCORE_MEANING", "AuditError", "AuditStatus", "FoldStatus", "Suspect", "audit_status",
           "default_dir", "load_results", "read_results", "start_audit", "stop_audit"]


@dataclass(frozen=True)
class Suspect:
    """One scored example: its 1-based `line` in the dataset file, its label (True = desirable), the suspicion
    `score` (higher = more suspicious), the held-out `reward` it came from, the `fold` that scored it, its rank
    (1 = most suspicious) and the start of its completion (untrusted text: neutralise it before showing it)."""

    rank: int
    line: int
    label: bool
    score: float
    reward: float
    fold: int
    preview: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "line": self.line, "label": self.label, "score": self.score,
                "reward": self.reward, "fold": self.fold, "preview": self.preview}


@dataclass(frozen=True)
class FoldStatus:
    """A fold's run: its status (core.runs.RunInfo), step, total, last loss, the error of a failed one, and while
    its KTO reference pass runs (before step 1) the sequences done of its total."""

    fold: int
    run_dir: Path
    status: str
    step: int = 0
    total_steps: int = 0
    last_loss: float | None = None
    error: str | None = None
    reference: tuple[int, int] | None = None


@dataclass(frozen=True)
class AuditStatus:
    """Where an audit stands. `state`: running (its driver is alive), done (audit.json holds the results),
    stopped, failed (`message` says why), incomplete (no driver and no result: start it again to resume).
    `phase` and `fold`: what the driver is doing or did last (training, scoring, done, stopped, failed)."""

    audit_dir: Path
    state: str
    phase: str = ""
    fold: int | None = None
    message: str = ""
    folds: list[FoldStatus] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state == "running"


def default_dir(config_path: Path, plan: Plan) -> Path:
    """Where an audit of this plan goes by default: `audits/` beside the config file (in a run directory for a
    run's config), named after the config, the folds and the plan's key, so that the same data and settings
    find the same directory again, and changed labels start a new audit."""
    return config_path.parent / "audits" / f"{config_path.stem}-k{plan.folds}-{plan.key[:8]}"


def start_audit(source: str | os.PathLike[str], folds: int = DEFAULT_FOLDS, audit_dir: str | os.PathLike[str] | None = None,
                iters: int | None = None) -> Path:
    """Audit the dataset of a CONFIG file or a RUN_DIR with `folds` folds of `iters` steps (default: the config's
    train.iters, at most audit_plan.DEFAULT_ITERS); returns the audit directory. Everything is checked before
    anything is written (AuditError, one line). A finished audit is left as it is; a running one is rejoined;
    otherwise the plan is written (kept, with the folds' runs, if it is already there) and the driver started."""
    source = Path(source)
    cfg, config_path = source_config(source)
    ds = load_dataset(cfg)
    plan = make_plan(source, cfg, ds, folds, iters)
    _preflight(cfg)
    audit_dir = Path(audit_dir) if audit_dir is not None else default_dir(config_path, plan)
    check_plan(audit_dir, plan)
    if _results_key(audit_dir) == plan.key or runs.is_locked(audit_dir):
        return audit_dir
    write_plan(audit_dir, plan, ds, cfg)
    pid = spawn(audit_dir)
    if not runs.wait_started(audit_dir, pid, timeout=START_TIMEOUT) and audit_status(audit_dir).state == "incomplete":
        tail = [line for line in runs.tail_log(audit_dir, 5) if line.strip()]
        raise AuditError(f"the audit exited at start ({audit_dir / 'audit.log'})" + (f": {tail[-1]}" if tail else ""))
    return audit_dir


def _preflight(cfg: Any) -> None:
    """The model (and the data, as a fold's KTO run reads it) checked as `tunedeck train` does."""
    from .data import DataError
    from .model import ModelError
    from .run_prep import InputError, preflight

    check = copy.deepcopy(cfg)
    check.train.method, check.data.valid_fraction = "kto", 0.0
    try:
        preflight(check)
    except (DataError, InputError, ModelError) as e:
        raise AuditError(str(e).splitlines()[0]) from None


def audit_status(audit_dir: str | os.PathLike[str]) -> AuditStatus:
    """The audit's state, its driver's phase and each fold's run (AuditError if it is no audit directory)."""
    audit_dir = Path(audit_dir)
    plan = read_plan(audit_dir)
    folds = []
    for k in range(1, plan.folds + 1):
        info = runs.run_info(fold_dir(audit_dir, k))
        reference = _reference_progress(info.run_dir) if info.status == "running" and not info.total_steps else None
        folds.append(FoldStatus(k, info.run_dir, info.status, info.step, info.total_steps,
                                info.last_loss, info.error, reference))
    locked = runs.is_locked(audit_dir)  # first: once it is seen free, the results and state below are final
    done = _results_key(audit_dir) == plan.key
    st = read_state(audit_dir)
    phase, message = str(st.get("phase", "")), str(st.get("message", ""))
    fold = st.get("fold") if isinstance(st.get("fold"), int) else None
    if done:
        state = "done"
    elif locked:
        state = "running"
    elif phase in ("stopped", "failed"):
        state = phase
    else:
        state = "incomplete"
    return AuditStatus(audit_dir, state, phase, fold, message, folds)


def read_results(audit_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """audit.json as written (the settings, `score` saying what the score means, `suspects`); AuditError if the
    audit has no results yet."""
    path = Path(audit_dir) / RESULTS
    try:
        results = json.loads(read_regular(path, 1 << 30))
    except FileNotFoundError:
        raise AuditError(f"{audit_dir}: no results yet ({RESULTS} is written when every fold is scored)") from None
    except (OSError, ValueError) as e:
        raise AuditError(f"{path}: cannot be read ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("suspects"), list):
        raise AuditError(f"{path}: not an audit's results")
    return results


def load_results(audit_dir: str | os.PathLike[str]) -> list[Suspect]:
    """Every scored example, most suspicious first (ties by line)."""
    rows = read_results(audit_dir)["suspects"]
    try:
        suspects = [Suspect(int(r["rank"]), int(r["line"]), bool(r["label"]), float(r["score"]), float(r["reward"]),
                            int(r["fold"]), str(r.get("preview", ""))) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise AuditError(f"{Path(audit_dir) / RESULTS}: a suspect without {e}") from None
    return sorted(suspects, key=lambda s: (-s.score, s.line))


def stop_audit(audit_dir: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> AuditStatus:
    """Ask the driver to stop (the fold being trained checkpoints first) and wait for it; start_audit resumes."""
    audit_dir = Path(audit_dir)
    pid = runlock.read_pid(audit_dir) if runs.is_locked(audit_dir) else None
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while runs.is_locked(audit_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
    return audit_status(audit_dir)


def _reference_progress(run_dir: Path) -> tuple[int, int] | None:
    """(done, total) of the run's latest reference event, while no start event has followed it."""
    last = None
    for e in runs.read_events(run_dir):
        if e.get("type") == "reference":
            last = e
        elif e.get("type") == "start":
            last = None
    done, total = (ev.integer(last.get(k)) for k in ("done", "total")) if last else (None, None)
    return (done, total) if done is not None and total else None


def _results_key(audit_dir: Path) -> str | None:
    """The plan key that audit.json was written for, or None."""
    try:
        return read_results(audit_dir).get("plan_key")
    except AuditError:
        return None
