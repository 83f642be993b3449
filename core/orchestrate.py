"""Run orchestration shared by the CLI and the app: find the live run, start a run or resume one as a
detached trainer, and report whether it started (or the end of train.log saying why not).

The primitives are core.runs' (spawn_detached, wait_started, stop_run, tail_log); this module is the
sequence the front ends follow with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import runs
from .rundir import RunDir

if TYPE_CHECKING:
    from .config import Config

LOG_TAIL = 15  # lines of train.log that say why a trainer exited at start
START_TIMEOUT = 120.0  # seconds the app gives a detached trainer to take its run's lock


class PreflightError(Exception):
    """The run's data or model cannot be used; nothing was started (the message says why)."""


@dataclass(frozen=True)
class Detached:
    """A detached trainer that was spawned: it holds its run (`started`), or it exited first and
    `log_tail` (the end of train.log) says why."""

    run_dir: Path
    pid: int
    started: bool
    log_tail: tuple[str, ...] = ()

    @property
    def failure(self) -> str:
        """The message for a trainer that exited at start: the log's path and its last lines."""
        return f"training exited at start; {RunDir(self.run_dir).log}:\n" + "\n".join(self.log_tail)


def find_running(runs_root: Path) -> Path | None:
    """The newest run under `runs_root` whose trainer is alive (holds the run's lock), if any."""
    if not runs_root.is_dir():
        return None
    live = [p for p in runs_root.iterdir() if RunDir(p).is_run() and runs.is_locked(p)]
    return max(live, key=lambda p: p.name, default=None)


def detach(run_dir: Path, resume: bool = False, timeout: float = 60.0,
           spawn: Callable[[], int] | None = None) -> Detached:
    """Start a detached trainer on the prepared `run_dir` (`spawn()` instead, e.g. core.launch.spawn for
    several workers: it returns the detached process's pid) and wait up to `timeout` s until it holds the run."""
    pid = spawn() if spawn is not None else runs.spawn_detached(run_dir, resume=resume)
    if runs.wait_started(run_dir, pid, timeout=timeout):
        return Detached(run_dir, pid, True)
    return Detached(run_dir, pid, False, tuple(runs.tail_log(run_dir, LOG_TAIL)))


def start_run(cfg: Config, config_path: Path | None, runs_root: Path) -> tuple[Path, bool]:
    """Check the data and the model as the CLI does (nothing is made when they are wrong: PreflightError), then
    freeze `cfg` into a new run directory and start its detached trainer: (run_dir, started)."""
    from .data import DataError
    from .model import ModelError
    from .run_prep import InputError, preflight, prepare_run

    try:
        preflight(cfg, config_path.parent if config_path else None)
    except DataError as e:
        errors = [p for p in e.problems if p.severity == "error"]
        first = f": {errors[0]}" if errors else ""
        raise PreflightError(f"the dataset has {len(errors)} error(s){first} (the Data screen lists them)") from None
    except (InputError, ModelError) as e:
        raise PreflightError(str(e)) from None
    run_dir = prepare_run(cfg, config_path, runs_root)  # a new config: `cfg` is not changed
    return run_dir, detach(run_dir, timeout=START_TIMEOUT).started


def resume_run(run_dir: Path) -> bool:
    """Start a detached trainer that resumes `run_dir` from its latest verified checkpoint; whether it started."""
    if runs.is_locked(run_dir):
        raise runs.RunError(f"{run_dir.name} is already running")
    runs.check_writable(run_dir)  # links, FIFOs or devices among its files: a RunError naming them
    return detach(run_dir, resume=True, timeout=START_TIMEOUT).started
