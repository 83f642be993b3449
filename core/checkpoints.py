"""Checkpoints on disk: writing one (and publishing its adapter), what is damaged (naming the file), setting
damaged ones aside, the resume point, restoring from it, retention.

A checkpoint `checkpoints/step-NNNNNN/` is written into a temp directory, fsynced and renamed into place,
its manifest (sha256 of each file) last. It is resumable when its manifest lists the four files a resume
reads, every listed file matches its sha256, and state.json holds the step its name says. One that is
not is moved aside to `checkpoints/corrupt-step-NNNNNN-<time>` (kept for the user, never read again),
so that the resumed run can write that step afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from . import checkpoint_files
from .faults import ckpt_pause
from .fsutil import atomic_dir, atomic_write_bytes, atomic_write_text, fsync_dir, read_regular, sha256_file
from .model import ADAPTER_CONFIG, ADAPTER_FILE, write_adapters

MANIFEST = "manifest.json"
STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_FILE)
RESUME_FILES = (*ADAPTER_FILES, OPTIMIZER, STATE)
NAME = re.compile(r"step-(\d+)")
MAX_JSON = 1 << 20  # manifest.json and state.json are a few hundred bytes


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names it and says why."""


class WriteError(Exception):
    """A checkpoint or adapter file could not be written (disk full, I/O error); names the file."""


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


# --- writing ----------------------------------------------------------------------------------------


FULL_BELOW = 2**20  # bytes free under which a failed write is put down to a full disk


@contextlib.contextmanager
def writing(run_dir: Path, what: str) -> Iterator[None]:
    """Turn a failed write (OSError, or MLX's RuntimeError) into a WriteError naming the run file."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(run_dir).free
            if free < FULL_BELOW and "No space" not in reason:  # MLX says only "Unable to write N bytes"
                reason = f"No space left on device ({reason})"
            reason += f" ({free / 2**20:.0f} MB free on that disk)"
        raise WriteError(f"cannot write {what} in {run_dir}: {reason}. Earlier checkpoints are intact; "
                         "free space and continue with `tunedeck train --resume RUN_DIR`") from e


def save(run_dir: Path, step: int, state: dict[str, Any], model: nn.Module, optimizer: optim.Optimizer,
         adapter_cfg: dict[str, Any]) -> Path:
    """Write checkpoints/step-N (adapter, optimizer state, state.json with `step` and `state`, manifest),
    point `latest` at it and publish its adapter to adapters/. Its path; WriteError names a failed file."""
    final = run_dir / "checkpoints" / checkpoint_files.checkpoint_name(step)
    where = f"checkpoints/{final.name}"
    with writing(run_dir, where), atomic_dir(final) as tmp:
        with writing(run_dir, f"{where}/{ADAPTER_FILE}"):
            write_adapters(model, adapter_cfg, tmp)
        ckpt_pause(ADAPTER_FILE)
        with writing(run_dir, f"{where}/{OPTIMIZER}"):
            mx.save_safetensors(str(tmp / OPTIMIZER), dict(tree_flatten(optimizer.state)))
        ckpt_pause(OPTIMIZER)
        with writing(run_dir, f"{where}/{STATE}"):
            (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=2) + "\n", encoding="utf-8")
        ckpt_pause(STATE)
        with writing(run_dir, f"{where}/{MANIFEST}"):
            checkpoint_files.write_manifest(tmp)
        ckpt_pause(MANIFEST)
    ckpt_pause(f"renamed {final.name}")  # renamed into place, `latest` not yet updated
    with writing(run_dir, "checkpoints/latest"):
        checkpoint_files.mark_latest(run_dir, final)
    ckpt_pause("latest")
    publish_adapters(run_dir, final)
    return final


def publish_adapters(run_dir: Path, ckpt: Path, announce: Callable[[str], None] = ckpt_pause) -> None:
    """Refresh run_dir/adapters/ (each file replaced atomically) from a verified checkpoint's files."""
    dest = run_dir / "adapters"
    # the config first: a publish cut short leaves a config without weights (readers fall back to the
    # newest checkpoint), never weights without the config that mlx_lm.load needs
    for name in ADAPTER_FILES:
        with writing(run_dir, f"adapters/{name}"):
            dest.mkdir(exist_ok=True)
            atomic_write_bytes(dest / name, (ckpt / name).read_bytes())
        announce(f"adapters/{name}")


def prune_verified(run_dir: Path, ckpt: Path, keep: int) -> tuple[list[str], str | None]:
    """train.keep_checkpoints: once `ckpt` verifies on disk, delete the oldest beyond the newest `keep`.
    Returns the names deleted and a warning when none could be."""
    if not keep:
        return [], None
    if why := resume_problem(ckpt):
        return [], f"checkpoints/{ckpt.name} does not verify after writing ({why}); older checkpoints are kept"
    try:
        return prune(run_dir, ckpt, keep), None
    except OSError as e:
        return [], f"cannot delete old checkpoints (train.keep_checkpoints = {keep}): {e}"


# --- resuming ---------------------------------------------------------------------------------------


def resume_from(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest resumable checkpoint, after removing half-written leftovers and moving damaged newer ones
    aside (so that the run can write their steps again), and a warning for each thing removed or moved."""
    warnings = [f"removed a half-written leftover: {p.name}" for p in checkpoint_files.clean_leftovers(run_dir)]
    with writing(run_dir, "checkpoints"):
        ckpt, aside = resume_point(run_dir)
    then = f"resuming from checkpoints/{ckpt.name}" if ckpt else "no verified checkpoint is left: training starts at step 0"
    return ckpt, warnings + [f"checkpoints/{a.name} is damaged ({a.why}): moved aside to checkpoints/{a.moved_to}; "
                             f"{then}" for a in aside]


def repair_adapters(run_dir: Path, ckpt: Path, warn: Callable[[str], None]) -> None:
    """Republish run_dir/adapters/ from the resume checkpoint where its files are missing or differ (damaged,
    or left from an earlier checkpoint by a kill during the publish), after a warning saying so."""
    if stale := stale_adapters(run_dir, ckpt):
        warn(f"adapters/{' and adapters/'.join(stale)} did not match checkpoints/{ckpt.name} (damaged, or older): "
             "republished from it")
        publish_adapters(run_dir, ckpt, announce=lambda _: None)


@contextlib.contextmanager
def _reading(ckpt: Path, name: str) -> Iterator[None]:
    """Turn a failed read of a checkpoint file into a CheckpointError naming it."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError, CheckpointError) as e:
        raise CheckpointError(f"cannot resume from {ckpt / name}: {e}. It matches its manifest, so it was written "
                              f"this way; move {ckpt.name} out of {ckpt.parent} to resume from an earlier "
                              "checkpoint") from None


def restore(ckpt: Path, model: nn.Module, optimizer: optim.Optimizer) -> int:
    """Load the adapter weights and optimizer state of a checkpoint that passed `resume_problem`; its step."""
    with _reading(ckpt, ADAPTER_FILE):
        model.load_weights(list(mx.load(str(ckpt / ADAPTER_FILE)).items()), strict=False)
        mx.eval(model.parameters())
    optimizer.init(model.trainable_parameters())
    with _reading(ckpt, OPTIMIZER):
        optimizer.state = tree_unflatten(list(mx.load(str(ckpt / OPTIMIZER)).items()))
        mx.eval(optimizer.state)
    with _reading(ckpt, STATE):
        return read_step(ckpt)
