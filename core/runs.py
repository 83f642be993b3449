"""Run directories: layout, the event log, the lock, checkpoints, and spawning/stopping/listing runs.

```
runs/<id>/config.toml          frozen config (data.path absolute)
runs/<id>/events.jsonl         one JSON event per line, flushed per event
runs/<id>/train.log            the training process's own output
runs/<id>/lock                 flock'ed by the live trainer; holds its PID
runs/<id>/adapters/            adapters.safetensors + adapter_config.json (mlx-lm layout)
runs/<id>/checkpoints/step-NNNNNN/   adapter + optimizer + state.json + manifest.json (sha256, written last)
runs/<id>/checkpoints/latest   name of the newest verified checkpoint
```
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from .fsutil import atomic_write_text, fsync_dir, sha256_file

EVENT_TYPES = ("start", "step", "eval", "checkpoint", "warning", "error", "stopped", "done")
TERMINAL_EVENTS = {"done": "finished", "stopped": "stopped", "error": "failed"}
MAX_EVENT_LINE = 1 << 20  # longer lines are skipped by readers, not parsed


class RunError(Exception):
    """A run directory that cannot be used as asked."""


# --- layout ----------------------------------------------------------------------------------


def new_run_dir(root: Path, method: str) -> Path:
    """A fresh, uniquely named directory under `root` (e.g. runs/20261125-163012-kto)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = root / (f"{stamp}-{method}" + (f"-{n}" if n else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"cannot create a run directory under {root}")


def check_writable(run_dir: Path) -> None:
    """Refuse a read-only run directory up front, before any training work."""
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"run directory {run_dir} is not writable: {e.strerror}") from None


# --- events ----------------------------------------------------------------------------------


class EventWriter:
    """Appends events to events.jsonl, one line each, flushed (and fsynced for terminal events)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "events.jsonl"
        self._f: TextIO = open(self.path, "a", encoding="utf-8")
        if _ends_mid_line(self.path):  # a writer killed mid-line: end that line so our first event parses
            self._f.write("\n")
            self._f.flush()

    def emit(self, type: str, step: int, **fields: Any) -> dict[str, Any]:
        event = {"type": type, "step": step, "time": round(time.time(), 3), **fields}
        try:
            line = json.dumps(event, allow_nan=False, default=str)
        except ValueError:  # NaN/inf (e.g. KTO rewards of a batch without that label): null keeps it strict JSON
            line = json.dumps(_finite(event), allow_nan=False, default=str)
        self._f.write(line + "\n")
        self._f.flush()
        if type in ("checkpoint", "error", "stopped", "done", "start"):
            os.fsync(self._f.fileno())
        return event

    def close(self) -> None:
        self._f.close()


def _finite(value: Any) -> Any:
    """`value` with every NaN/inf float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def parse_event(line: str) -> dict[str, Any] | None:
    """One event from a line, or None for garbage (bad JSON, not an object, no type)."""
    if len(line) > MAX_EVENT_LINE:
        return None
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete, well-formed event (a half-written last line is ignored; an unreadable file reads as none)."""
    try:
        return list(iter_events(run_dir, follow=False))
    except OSError:
        return []


def iter_events(run_dir: Path, follow: bool = False, poll: float = 0.25,
                stop: Any = None) -> Iterator[dict[str, Any]]:
    """Yield events from the start; with follow=True keep waiting for new ones until `stop()` is true.

    Tolerates a partial last line (kept until its newline arrives), garbage lines and huge lines.
    """
    path = run_dir / "events.jsonl"
    while not path.exists():
        if not follow or (stop and stop()):
            return
        time.sleep(poll)
    with open(path, "rb") as f:
        pending = b""
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    event = parse_event(raw.decode("utf-8", "replace"))
                    if event is not None:
                        yield event
                if len(pending) > MAX_EVENT_LINE:
                    pending = b""  # an endless line: drop it rather than grow without bound
                continue
            if not follow or (stop and stop()):
                return
            time.sleep(poll)


# --- lock ------------------------------------------------------------------------------------


class RunLock:
    """An exclusive flock on run_dir/lock holding the trainer's PID; released when the process dies."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "lock"
        self._fd: int | None = None
        self.took_over_from: int | None = None

    def acquire(self, retries: int = 20) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(retries):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if attempt == retries - 1:
                    os.close(fd)
                    raise RunError(
                        f"{self.path.parent} is in use by another trainer (pid {read_pid(self.path.parent)}); "
                        "stop it first with `tunedeck stop`"
                    ) from None
                time.sleep(0.1)
        old = os.read(fd, 64).decode(errors="replace").strip()
        if old.isdigit() and int(old) != os.getpid():
            self.took_over_from = int(old)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def read_pid(run_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((run_dir / "lock").read_text().strip())
    return None


def is_locked(run_dir: Path) -> bool:
    """True while a live trainer holds the run's lock (probed with a shared, non-blocking flock)."""
    try:
        fd = os.open(run_dir / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# --- checkpoints -----------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def write_manifest(ckpt: Path) -> None:
    """sha256 of every file, written last: a checkpoint without a valid manifest is not a checkpoint."""
    files = {p.name: sha256_file(p) for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (ckpt / "manifest.json").write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")


def verify_checkpoint(ckpt: Path) -> bool:
    try:
        files = json.loads((ckpt / "manifest.json").read_text(encoding="utf-8"))["files"]
        return bool(files) and all(sha256_file(ckpt / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove half-written temp dirs/files left by a killed writer; returns what was removed."""
    removed: list[Path] = []
    for parent in (run_dir, run_dir / "checkpoints", run_dir / "adapters"):
        if not parent.is_dir():
            continue
        for p in parent.iterdir():
            if p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies (unverifiable ones are skipped)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    for ckpt in sorted((p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")), reverse=True):
        if verify_checkpoint(ckpt):
            return ckpt
    return None


def mark_latest(run_dir: Path, ckpt: Path) -> None:
    atomic_write_text(run_dir / "checkpoints" / "latest", ckpt.name + "\n")


# --- listing ---------------------------------------------------------------------------------


@dataclass
class RunInfo:
    run_dir: Path
    status: str  # running | finished | stopped | failed | stale | new
    method: str = ""
    step: int = 0
    total_steps: int = 0
    last_loss: float | None = None
    last_val_loss: float | None = None
    best_val_loss: float | None = None
    started: float | None = None
    updated: float | None = None
    pid: int | None = None
    error: str | None = None
    workers: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "run_dir": str(self.run_dir), "status": self.status, "method": self.method, "step": self.step,
            "total_steps": self.total_steps, "last_loss": self.last_loss, "last_val_loss": self.last_val_loss,
            "best_val_loss": self.best_val_loss, "started": self.started, "updated": self.updated,
            "workers": self.workers,
        }
        if self.pid is not None:
            out["pid"] = self.pid
        if self.error:
            out["error"] = self.error
        return out


def _num(value: Any) -> float | None:
    """A finite number from an event field written by anyone, else None (keeps `runs --json` strict JSON)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return None


def _int(value: Any, default: int = 0) -> int:
    v = _num(value)
    return default if v is None else int(v)


def summarize(events: Iterable[dict[str, Any]], run_dir: Path, alive: bool, pid: int | None) -> RunInfo:
    """Fold an event history (a list, or a stream: memory stays flat however long the run) into a RunInfo."""
    info = RunInfo(run_dir, "new")
    terminal = None
    any_event = False
    for e in events:
        any_event = True
        kind = e.get("type")
        step = e.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            info.step = max(info.step, step) if kind != "start" else step
        if kind == "start":
            info.method = str(e.get("method", ""))
            info.total_steps = _int(e.get("total_steps"))
            info.started = info.started or _num(e.get("time"))
            info.workers = _int(e.get("workers"), 1) or 1
            terminal = None
        elif kind == "step" and _num(e.get("loss")) is not None:
            info.last_loss = e["loss"]
        elif kind == "eval" and _num(e.get("val_loss")) is not None:
            info.last_val_loss = e["val_loss"]
            if info.best_val_loss is None or e["val_loss"] < info.best_val_loss:
                info.best_val_loss = e["val_loss"]
        elif kind in TERMINAL_EVENTS:
            terminal = kind
            if kind == "error":
                info.error = str(e.get("message", ""))
        if _num(e.get("time")) is not None:
            info.updated = e["time"]
    if alive:
        info.status, info.pid = "running", pid
    elif terminal:
        info.status = TERMINAL_EVENTS[terminal]
    elif any_event:
        info.status = "stale"  # the process died without a final event (killed, crashed, machine lost)
    return info


def run_info(run_dir: Path) -> RunInfo:
    alive = is_locked(run_dir)
    return summarize(_stream_events(run_dir), run_dir, alive, read_pid(run_dir) if alive else None)


def _stream_events(run_dir: Path) -> Iterator[dict[str, Any]]:
    """iter_events without follow; an unreadable events file reads as none."""
    try:
        yield from iter_events(run_dir, follow=False)
    except OSError:
        return


def list_runs(root: Path) -> list[RunInfo]:
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and (p / "config.toml").is_file()]
    return [run_info(p) for p in sorted(dirs)]


# --- processes -------------------------------------------------------------------------------


def spawn_detached(run_dir: Path, resume: bool = False, extra_env: dict[str, str] | None = None,
                   launcher: list[str] | None = None) -> int:
    """Start `tunedeck _run RUN_DIR` in its own session (survives the terminal); output to train.log.

    `launcher` (e.g. `mlx.launch ... --`, see core.launch) goes before the command: then the launcher is
    the detached process, and its ranks run the command."""
    from .backend import subprocess_env

    cmd = [*(launcher or []), sys.executable, "-m", "tunedeck.core.cli", "_run", str(run_dir)]
    if resume:
        cmd.append("--resume")
    log = open(run_dir / "train.log", "ab")
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=subprocess_env(extra_env), cwd=run_dir,
        )
    finally:
        log.close()
    return proc.pid


def wait_started(run_dir: Path, pid: int, timeout: float = 60.0) -> bool:
    """Wait until the detached trainer holds the lock (or has exited). True if it is running."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        if is_locked(run_dir):
            return True
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.05)
    return is_locked(run_dir)


def stop_run(run_dir: Path, timeout: float = 120.0, sig: int = signal.SIGTERM) -> RunInfo:
    """Ask the trainer to checkpoint and exit; wait for it. Raises RunError if it is not running."""
    if not is_locked(run_dir):
        raise RunError(f"{run_dir} is not running")
    pid = read_pid(run_dir)
    if pid is None:
        raise RunError(f"{run_dir} is locked but names no process")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.time() + timeout
    while is_locked(run_dir) and time.time() < deadline:
        time.sleep(0.1)
    if is_locked(run_dir):
        raise RunError(f"{run_dir}: trainer (pid {pid}) did not stop within {timeout:.0f} s")
    return run_info(run_dir)


def tail_log(run_dir: Path, lines: int = 20) -> list[str]:
    """The last lines of train.log (for error reports)."""
    path = run_dir / "train.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def remove_run(run_dir: Path) -> None:
    if is_locked(run_dir):
        raise RunError(f"{run_dir} is running; stop it before deleting")
    shutil.rmtree(run_dir)
    fsync_dir(run_dir.parent)
