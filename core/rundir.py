"""A run directory as a value: where its files are, whether a directory is a run, its checkpoints.

```
runs/<id>/config.toml          frozen config (data.path absolute): its presence makes the directory a run
runs/<id>/events.jsonl         one JSON event per line (core.events), flushed per event
runs/<id>/train.log            the training process's own output
runs/<id>/lock                 the live trainer's PID; it flocks this file and the run directory itself
runs/<id>/spawn.json           the detached process's PID and start time (core.runs.spawn_detached)
runs/<id>/eval.json            the latest `tunedeck eval` results
runs/<id>/reference-*.npz      the KTO reference log-probs (core.reference)
runs/<id>/adapters/            adapters.safetensors + adapter_config.json (mlx-lm layout)
runs/<id>/checkpoints/step-NNNNNN/   adapter + optimizer + state.json + manifest.json (sha256, written last)
runs/<id>/checkpoints/latest   name of the newest verified checkpoint
```
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from .fsutil import file_kind

CONFIG = "config.toml"
EVENTS = "events.jsonl"
LOG = "train.log"
LOCK = "lock"
SPAWN = "spawn.json"
EVAL = "eval.json"
ADAPTERS = "adapters"
CHECKPOINTS = "checkpoints"
LATEST = f"{CHECKPOINTS}/latest"
REFERENCE_PREFIX = "reference-"
# the run's own entries: each, where present, must be a regular file (or a real directory), never a link
FILES = (CONFIG, EVENTS, LOG, LOCK, SPAWN, EVAL, LATEST)
DIRS = (CHECKPOINTS, ADAPTERS)
CHECKPOINT_NAME = re.compile(r"step-(\d+)")  # checkpoints/step-N (six digits written, any number read)


@dataclass(frozen=True)
class RunDir:
    """The run directory at `path` (which need not exist yet)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def spawn_record(self) -> Path:
        return self.path / SPAWN

    @property
    def adapters(self) -> Path:
        return self.path / ADAPTERS

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def is_run(self) -> bool:
        """Whether this directory is a run: it holds a config.toml entry (not followed: a linked or FIFO
        config.toml still makes a run, a damaged one that `problems` names)."""
        return os.path.lexists(self.config)

    def holds_run(self) -> bool:
        """Whether a run was already prepared here (a frozen config or events, even as a dangling link)."""
        return any(os.path.lexists(p) for p in (self.config, self.events))

    def problems(self) -> list[str]:
        """The run's files that are links or not regular files (and its subdirectories that are not real
        directories): writing through a link would change its target, and reading a FIFO or device blocks."""
        found = []
        names = [*FILES, *(p.name for p in entries(self.path) if p.name.startswith(REFERENCE_PREFIX))]
        names += [f"{ADAPTERS}/{p.name}" for p in entries(self.adapters)]
        for name in dict.fromkeys(names):
            mode = lstat_mode(self.path / name)
            if mode is not None and not stat.S_ISREG(mode):
                found.append(f"{name} is {file_kind(mode)}")
        for name in DIRS:
            mode = lstat_mode(self.path / name)
            if mode is not None and not stat.S_ISDIR(mode):
                found.append(f"{name} is {file_kind(mode)}, not a directory")
        return found

    def checkpoints(self) -> list[Path]:
        """Every checkpoints/step-N entry, directory or not (a file in its place is a damaged checkpoint),
        newest (highest N) first. A checkpoints/ that is a link is not looked into."""
        found = [(n, p) for p in entries(self.checkpoints_dir) if (n := checkpoint_step(p)) is not None]
        return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]

    def checkpoint_dirs(self) -> list[Path]:
        """The checkpoints that are real directories (not links), newest first."""
        return [p for p in self.checkpoints() if stat.S_ISDIR(lstat_mode(p) or 0)]


def checkpoint_step(entry: Path) -> int | None:
    """N for an entry named step-N, else None (step-N.tmp, corrupt-step-N-..., latest)."""
    m = CHECKPOINT_NAME.fullmatch(entry.name)
    return int(m.group(1)) if m else None


def entries(path: Path) -> list[Path]:
    """The entries of a real directory (none for a link, a file or a missing path)."""
    mode = lstat_mode(path)
    if mode is None or not stat.S_ISDIR(mode):
        return []
    with contextlib.suppress(OSError):
        return list(path.iterdir())
    return []


def lstat_mode(path: Path) -> int | None:
    """`path`'s mode, not following a link; None if it cannot be read."""
    try:
        return os.stat(path, follow_symlinks=False).st_mode
    except OSError:
        return None


WORKER_MODULE = "tunedeck.core.worker"


def trainer_command(run_dir: Path, resume: bool) -> list[str]:
    """The argv of the training process on `run_dir` (core.worker; an absolute path, so the child's working
    directory is irrelevant)."""
    return [sys.executable, "-m", WORKER_MODULE, str(Path(run_dir).resolve()), *(["--resume"] if resume else [])]
