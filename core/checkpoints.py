"""Checkpoints on disk: what is damaged (naming the file), setting damaged ones aside, retention.

A checkpoint `checkpoints/step-NNNNNN/` is resumable when its manifest lists the four files a resume
reads, every listed file matches its sha256, and state.json holds the step its name says. One that is
not is moved aside to `checkpoints/corrupt-step-NNNNNN-<time>` (kept for the user, never read again),
so that the resumed run can write that step afresh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_text, fsync_dir, read_regular, sha256_file

MANIFEST = "manifest.json"
STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
ADAPTER_FILES = ("adapter_config.json", "adapters.safetensors")  # also model.ADAPTER_CONFIG, ADAPTER_FILE
RESUME_FILES = (*ADAPTER_FILES, OPTIMIZER, STATE)
NAME = re.compile(r"step-(\d+)")
MAX_JSON = 1 << 20  # manifest.json and state.json are a few hundred bytes


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class SetAside:
    name: str  # the checkpoint's name, e.g. step-000004
    moved_to: str  # its new name under checkpoints/
    why: str


def step_of(entry: Path) -> int | None:
    """N for an entry named step-N (any number of digits), else None."""
    m = NAME.fullmatch(entry.name)
    return int(m.group(1)) if m else None


def steps(run_dir: Path) -> list[Path]:
    """Every `checkpoints/step-N` entry (directory or not), newest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(n, p) for p in root.iterdir() if (n := step_of(p)) is not None]
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def manifest_files(ckpt: Path) -> dict[str, str]:
    """The manifest's {file name: sha256}, every file checked; CheckpointError names the first bad one."""
    try:
        mode = os.stat(ckpt, follow_symlinks=False).st_mode
    except OSError as e:
        raise CheckpointError(f"{ckpt.name} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISDIR(mode):
        raise CheckpointError(f"{ckpt.name} is not a directory")
    manifest = _json(ckpt / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
        raise CheckpointError(f'{MANIFEST} has no "files" table of sha256 digests')
    for name, digest in files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{MANIFEST} lists {name!r}, which is not a file name")
        try:
            actual = sha256_file(ckpt / name, regular_only=True)
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name
            raise CheckpointError(f"{name!r} cannot be read ({getattr(e, 'strerror', None) or e})") from None
        if actual != digest:
            raise CheckpointError(f"{name!r} does not match its sha256 in {MANIFEST} (truncated or altered)")
    return files


def read_step(ckpt: Path) -> int:
    """The step in state.json (a whole number); CheckpointError otherwise."""
    state = _json(ckpt / STATE)
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f'{STATE}: "step" is {step!r}, expected a whole number')
    return step


def _json(path: Path) -> Any:
    """A small JSON file of a checkpoint (a regular file: never a link, FIFO or device); CheckpointError names it."""
    try:
        return json.loads(read_regular(path, MAX_JSON).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing (the write did not finish)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is unreadable ({e})") from None


def resume_problem(ckpt: Path) -> str | None:
    """Why a resume cannot start from `ckpt` (naming the file), or None."""
    try:
        files = manifest_files(ckpt)
        missing = [name for name in RESUME_FILES if name not in files]
        if missing:
            raise CheckpointError(f"{MANIFEST} does not list {', '.join(missing)}")
        step = read_step(ckpt)
    except CheckpointError as e:
        return str(e)
    if step != step_of(ckpt):
        return f'{STATE}: "step" is {step}, but the checkpoint is {ckpt.name}'
    return None


def set_aside(entry: Path) -> Path:
    """Rename a damaged checkpoint to checkpoints/corrupt-<name>-<time> (never overwriting); its new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        dest = entry.with_name(f"corrupt-{entry.name}-{stamp}" + (f"-{n}" if n else ""))
        if not os.path.lexists(dest):
            os.rename(entry, dest)
            fsync_dir(entry.parent)
            return dest
    raise FileExistsError(f"no free name for setting {entry} aside")


def resume_point(run_dir: Path) -> tuple[Path | None, list[SetAside]]:
    """The newest resumable checkpoint, after moving every damaged one newer than it aside.

    `checkpoints/latest` is pointed at the checkpoint found (removed when there is none) if it moved any."""
    aside: list[SetAside] = []
    found = None
    for entry in steps(run_dir):
        why = resume_problem(entry)
        if why is None:
            found = entry
            break
        aside.append(SetAside(entry.name, set_aside(entry).name, why))
    if aside:
        latest = run_dir / "checkpoints" / "latest"
        if found is not None:
            atomic_write_text(latest, found.name + "\n")
        else:
            latest.unlink(missing_ok=True)
    return found, aside


def stale_adapters(run_dir: Path, ckpt: Path) -> list[str]:
    """The files of run_dir/adapters/ that are missing or differ from the checkpoint's."""
    stale = []
    for name in ADAPTER_FILES:
        try:
            same = (run_dir / "adapters" / name).read_bytes() == (ckpt / name).read_bytes()
        except OSError:
            same = False
        if not same:
            stale.append(name)
    return stale


def prune(run_dir: Path, newest: Path, keep: int) -> list[str]:
    """Delete the oldest checkpoints so that `keep` remain, counting `newest`; 0 keeps all. Never touches
    `newest`, anything newer, or what was set aside. Each is renamed to a `.tmp` name before it is deleted,
    so a kill mid-way leaves a leftover that a resume removes, not a half checkpoint. Returns the names."""
    n = step_of(newest)
    if keep <= 0 or n is None:
        return []
    older = [p for p in steps(run_dir) if p.is_dir() and (step_of(p) or 0) < n]
    pruned = []
    for ckpt in older[keep - 1 :]:
        doomed = ckpt.with_name(f"{ckpt.name}.pruned.tmp")
        os.rename(ckpt, doomed)
        shutil.rmtree(doomed)
        pruned.append(ckpt.name)
    if pruned:
        fsync_dir(newest.parent)
    return sorted(pruned)
