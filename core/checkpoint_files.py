"""A run's checkpoints as files: their names, the manifest that makes a directory a checkpoint, verifying it,
the newest verified one, the `latest` pointer, and the temp leftovers of a killed writer.

Light on purpose (no MLX): the CLI's listing and the app read checkpoints through it; core.checkpoints writes
and restores them."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_text, sha256_file
from .rundir import LATEST, RunDir, entries, lstat_mode


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def write_manifest(ckpt: Path) -> None:
    """sha256 of every file, written last: a checkpoint without a valid manifest is not a checkpoint."""
    files = {p.name: sha256_file(p) for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (ckpt / "manifest.json").write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")


def verify_checkpoint(ckpt: Path) -> bool:
    try:
        files = json.loads((ckpt / "manifest.json").read_text(encoding="utf-8"))["files"]
        return bool(files) and all(_plain_name(name) and sha256_file(ckpt / name, regular_only=True) == digest
                                   for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _plain_name(name: Any) -> bool:
    """A manifest entry names a file in its own checkpoint directory, nothing else."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove half-written temp dirs/files left by a killed writer; returns what was removed.
    Links are removed themselves, never followed; a linked checkpoints/ or adapters/ is not looked into."""
    removed: list[Path] = []
    rd = RunDir(run_dir)
    for parent in (rd.path, rd.checkpoints_dir, rd.adapters):
        for p in entries(parent):
            if p.name.endswith(".tmp"):
                mode = lstat_mode(p)
                shutil.rmtree(p, ignore_errors=True) if mode and stat.S_ISDIR(mode) else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies (unverifiable ones are skipped)."""
    return next((ckpt for ckpt in RunDir(run_dir).checkpoint_dirs() if verify_checkpoint(ckpt)), None)


def mark_latest(run_dir: Path, ckpt: Path) -> None:
    atomic_write_text(run_dir / LATEST, ckpt.name + "\n")
