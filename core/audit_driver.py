"""A label audit's own process: `python -m tunedeck.core.audit_driver AUDIT_DIR`.

Started detached by core.audit.start_audit (in its own session, so it outlives the terminal, as a detached
trainer does). It holds the audit directory's lock (core.runlock.RunLock: a second driver is refused), trains the
folds one after another, each by the normal detached trainer on its own run directory (a finished fold is
kept, a stopped, failed or interrupted one resumed from its newest checkpoint), then scores every fold and
writes audit.json (core.audit_score). Its phase goes to AUDIT_DIR/state.json, its output to AUDIT_DIR/audit.log.
SIGTERM or SIGINT stops the fold being trained (which checkpoints first), then the driver exits ("stopped").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import runlock, runs
from .audit_plan import Plan, fold_dir, read_plan
from .fsutil import atomic_write_text, open_regular, read_regular

MODULE = "tunedeck.core.audit_driver"
STATE = "state.json"
LOG = "audit.log"
POLL = 0.5  # seconds between looks at a fold's trainer
START_TIMEOUT = 120.0  # seconds a fold's trainer (or the driver) gets to take its lock
STOP_TIMEOUT = 600.0  # seconds a fold's trainer gets to checkpoint and exit when the audit is stopped


def spawn(audit_dir: Path) -> int:
    """Start the driver on `audit_dir` in its own session, its output appended to audit.log; its pid."""
    from .backend import subprocess_env

    audit_dir = audit_dir.resolve()
    log = open_regular(audit_dir / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        proc = subprocess.Popen([sys.executable, "-m", MODULE, str(audit_dir)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=subprocess_env(), cwd=audit_dir)
    finally:
        os.close(log)
    return proc.pid


def read_state(audit_dir: Path) -> dict[str, Any]:
    """The driver's last written phase ({phase, fold, message, pid, time}), or {} if none can be read."""
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(read_regular(audit_dir / STATE, 1 << 20))
        if isinstance(state, dict):
            return state
    return {}


class Driver:
    """Trains, then scores, the folds of the audit in `audit_dir` (see the module's docstring)."""

    def __init__(self, audit_dir: Path) -> None:
        self.audit_dir = audit_dir
        self.stop = False

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.stop = True

    def state(self, phase: str, fold: int | None = None, message: str = "") -> None:
        atomic_write_text(self.audit_dir / STATE, json.dumps(
            {"phase": phase, "fold": fold, "message": message, "pid": os.getpid(), "time": round(time.time(), 3)}) + "\n")
        print(f"audit: {phase}" + (f" fold {fold}" if fold else "") + (f": {message}" if message else ""), flush=True)

    def run(self) -> int:
        """The whole audit; the exit status (0 also when stopped by a signal)."""
        lock = runlock.RunLock(self.audit_dir)
        try:
            lock.acquire(retries=1)
        except runlock.RunError:
            print(f"audit: {self.audit_dir} already has a driver (pid {runlock.read_pid(self.audit_dir)})", flush=True)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            return self._audit(read_plan(self.audit_dir))
        except Exception as e:  # the audit is marked failed with the reason; the traceback goes to audit.log
            traceback.print_exc()
            self.state("failed", message=f"{type(e).__name__}: {e}")
            return 1
        finally:
            lock.release()

    def _audit(self, plan: Plan) -> int:
        from .audit_score import score_fold, write_results  # MLX: only once the folds are trained

        for fold in range(1, plan.folds + 1):
            self.state("training", fold)
            status, why = self._train(fold)
            if status != "finished":
                stopped = status == "stopped" or self.stop
                why = why or (f"fold {fold}'s trainer ended without finishing; see "
                              f"{fold_dir(self.audit_dir, fold) / 'train.log'}")
                self.state("stopped" if stopped else "failed", fold, why)
                return 0 if stopped else 1
        scored = []
        for fold in range(1, plan.folds + 1):
            if self.stop:
                self.state("stopped", fold, "stopped before scoring")
                return 0
            self.state("scoring", fold)
            scored.append(score_fold(self.audit_dir, plan, fold))
        write_results(self.audit_dir, plan, scored)
        self.state("done")
        return 0

    def _train(self, fold: int) -> tuple[str, str]:
        """Bring fold `fold`'s run to an end: (its status: finished, stopped, failed, ...; why, if it did not finish)."""
        run_dir = fold_dir(self.audit_dir, fold)
        info = runs.run_info(run_dir)
        pid = None
        if info.status == "finished":
            return "finished", ""
        if info.status not in ("running", "paused"):  # else a trainer left by an earlier driver: wait for it
            if self.stop:
                return "stopped", "stopped before training"
            pid = runs.spawn_detached(run_dir, resume=info.status != "new")
            if not runs.wait_started(run_dir, pid, timeout=START_TIMEOUT) and not runs.read_events(run_dir):
                tail = [line for line in runs.tail_log(run_dir, 5) if line.strip()]
                return "failed", f"fold {fold}'s trainer exited at start" + (f": {tail[-1]}" if tail else "")
        while runs.is_locked(run_dir):
            if self.stop:
                with contextlib.suppress(runlock.RunError):
                    runs.stop_run(run_dir, timeout=STOP_TIMEOUT)
            time.sleep(POLL)
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        info = runs.run_info(run_dir)
        return info.status, info.error or ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    p.add_argument("audit_dir")
    args = p.parse_args(argv)
    return Driver(Path(args.audit_dir)).run()


if __name__ == "__main__":
    sys.exit(main())
