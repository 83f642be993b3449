"""Run directories in use: making one, the event log's writer and readers (the lock: core.runlock), a run's state and the list of runs, and the detached trainer's process (spawn, wait, stop).

The layout is core.rundir's; the events' schema and their fold are core.events'.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import events as ev
from .fsutil import atomic_write_text, fsync_dir, open_regular, read_regular
from .rundir import RunDir, trainer_command
from .runlock import REGULAR_ONLY, RunError, is_locked, read_pid

MAX_EVENT_LINE = ev.MAX_LINE  # readers drop a line longer than this (an endless one) and parse none


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


def check_run_files(run_dir: Path) -> None:
    """Refuse a run directory whose own files are links, FIFOs, devices or directories (RunDir.problems)."""
    if problems := RunDir(run_dir).problems():
        raise RunError(f"{run_dir}: {'; '.join(problems)}; {REGULAR_ONLY}: remove them, or use another run directory")


def check_writable(run_dir: Path) -> None:
    """Refuse, up front and before any training work, a run directory with unsafe files (check_run_files)
    or one that is read-only."""
    check_run_files(run_dir)
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        probe.unlink()
    except OSError as e:
        raise RunError(f"run directory {run_dir} is not writable: {e.strerror}") from None


def holds_run(run_dir: Path) -> bool:
    """Whether a run was already prepared in `run_dir` (a frozen config or events, even as a dangling link)."""
    rd = RunDir(run_dir)
    return any(os.path.lexists(p) for p in (rd.config, rd.events))


# --- events ----------------------------------------------------------------------------------


class EventWriter:
    """Appends events (core.events.build: checked against the schema) to events.jsonl, one strict-JSON line
    each, flushed (and fsynced for the start, checkpoint and final events).

    `check` (e.g. RunLock.check) runs before each event; a message it returns is written as a warning first."""

    def __init__(self, run_dir: Path, check: Callable[[], str | None] | None = None) -> None:
        self.path = RunDir(run_dir).events
        self._fd = open_regular(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        self.check = check
        if _ends_mid_line(self._fd):  # a writer killed mid-line: end that line so our first event parses
            self._append("\n")

    def emit(self, type: str, step: int, **fields: Any) -> ev.Event:
        """Write the event `type` at `step` (EventError, before anything is written, if its fields do not fit);
        returns it as built (NaN and inf as they were, for the caller's display)."""
        if self.check and (message := self.check()):
            self._append(ev.encode(ev.build("warning", step, message=message)) + "\n")
        event = ev.build(type, step, **fields)
        self._append(ev.encode(event) + "\n")
        if type in ev.DURABLE:
            os.fsync(self._fd)
        return event

    def _append(self, text: str) -> None:
        """`text` appended whole, or not at all: a write that fails part-way (a full disk) is cut back off, so
        the file never ends in a torn line, and the OSError is raised."""
        data, start = text.encode("utf-8"), os.fstat(self._fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise

    def close(self) -> None:
        os.close(self._fd)


def _ends_mid_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def read_events(run_dir: Path) -> list[ev.Event]:
    """Every complete, well-formed event (a half-written last line is ignored; an unreadable file reads as none)."""
    try:
        return list(iter_events(run_dir, follow=False))
    except OSError:
        return []


def iter_events(run_dir: Path, follow: bool = False, poll: float = 0.25,
                stop: Any = None) -> Iterator[ev.Event]:
    """Yield events (core.events.parse) from the start; with follow=True keep waiting for new ones until
    `stop()` is true.

    Tolerates a partial last line (kept until its newline arrives), garbage lines and huge lines. Never blocks:
    a link, FIFO or device raises NotRegularFile (an OSError); without follow, reads only the bytes the file
    held when it was opened.
    """
    path = RunDir(run_dir).events
    while not os.path.lexists(path):
        if not follow or (stop and stop()):
            return
        time.sleep(poll)
    with os.fdopen(open_regular(path), "rb") as f:
        left = math.inf if follow else os.fstat(f.fileno()).st_size
        pending = b""
        while True:
            chunk = f.read(int(min(1 << 16, left)))
            left -= len(chunk)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    event = ev.parse(raw.decode("utf-8", "replace"))
                    if event is not None:
                        yield event
                if len(pending) > MAX_EVENT_LINE:
                    pending = b""  # an endless line: drop it rather than grow without bound
                continue
            if not follow or (stop and stop()):
                return
            time.sleep(poll)


# --- listing ---------------------------------------------------------------------------------


@dataclass
class RunInfo:
    run_dir: Path
    status: str  # running | paused (its process is stopped, e.g. SIGSTOP) | finished | stopped | failed | stale | new
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


def summarize(events: Iterable[ev.Event], run_dir: Path, alive: bool, pid: int | None) -> RunInfo:
    """Fold an event history (a list, or a stream: memory stays flat however long the run) into a RunInfo."""
    state = ev.RunState()
    for e in events:
        state.apply(e)
    info = RunInfo(run_dir, "new", method=state.method, step=state.step, total_steps=state.total_steps,
                   last_loss=state.last_loss, last_val_loss=state.last_val_loss, best_val_loss=state.best_val_loss,
                   started=state.started, updated=state.updated, error=state.error, workers=state.workers)
    if alive:
        info.status, info.pid = "running", pid
    elif state.outcome:
        info.status = state.outcome
    elif state.events:
        info.status = "stale"  # the process died without a final event (killed, crashed, machine lost)
    return info


def run_info(run_dir: Path) -> RunInfo:
    """The run's state from its lock, events and spawn record. Never blocks: a run whose files are links, FIFOs
    or devices is `failed` with them named; a trainer that died before writing an event is `failed` with the
    end of train.log; a live trainer whose process is stopped (SIGSTOP, a debugger) is `paused`."""
    alive = is_locked(run_dir)
    pid = read_pid(run_dir) if alive else None
    info = summarize(_stream_events(run_dir), run_dir, alive, pid)
    if problems := RunDir(run_dir).problems():
        info.error = f"{'; '.join(problems)} ({REGULAR_ONLY})"
        if not alive:
            info.status = "failed"
    elif alive and pid is not None and process_stopped(pid):
        info.status = "paused"
    elif not alive and (reason := _died_at_start(run_dir, info)):
        info.status, info.error = "failed", reason
    return info


def process_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, ctrl+z, a debugger): a live trainer that makes no progress."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    return False


def _died_at_start(run_dir: Path, info: RunInfo) -> str | None:
    """Why the last detached trainer exited before writing any event (the end of train.log), or None if
    none was spawned, it wrote events, or it is still starting."""
    spawned = _read_spawn(run_dir)
    if spawned is None or (info.updated is not None and info.updated >= spawned[1]) or _alive(*spawned):
        return None
    tail = [line.strip() for line in tail_log(run_dir, 20) if line.strip()]
    return "the trainer exited before it started" + (f": {tail[-1]}" if tail else " (train.log is empty)")


def _read_spawn(run_dir: Path) -> tuple[int, float] | None:
    """(pid, time) from spawn.json, or None if it is missing or malformed."""
    try:
        record = json.loads(read_regular(RunDir(run_dir).spawn_record, 4096))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    pid, when = record.get("pid"), ev.number(record.get("time"))
    return (pid, when) if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and when else None


def _alive(pid: int, spawned: float) -> bool:
    """Whether `pid` is still the process spawned at `spawned` (not a zombie, not a later process reusing it)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= spawned + 1
    except psutil.Error:
        return False


def _stream_events(run_dir: Path) -> Iterator[ev.Event]:
    """iter_events without follow; an unreadable events file reads as none."""
    try:
        yield from iter_events(run_dir, follow=False)
    except OSError:
        return


#: list_runs' cache: each run's (events file size, its mtime, locked) and the RunInfo read then
RunsCache = dict[Path, tuple[tuple[int, int, bool], RunInfo]]


def list_runs(root: Path, cache: RunsCache | None = None) -> list[RunInfo]:
    """Every run directly under `root` (RunDir.is_run), by name. With a `cache` kept between calls (the app
    lists every few seconds), a run whose events file and lock are unchanged is not read again."""
    if not root.is_dir():
        return []
    dirs = sorted(p for p in root.iterdir() if RunDir(p).is_run())
    if cache is None:
        return [run_info(p) for p in dirs]
    return [_cached_info(p, cache) for p in dirs]


def _cached_info(run_dir: Path, cache: RunsCache) -> RunInfo:
    """run_info(run_dir), from `cache` while the run's events file and lock are as they were."""
    try:
        st = RunDir(run_dir).events.stat()
        key = (st.st_size, st.st_mtime_ns, is_locked(run_dir))
    except OSError:
        key = (0, 0, is_locked(run_dir))
    cached = cache.get(run_dir)
    if cached is None or cached[0] != key:
        cached = (key, run_info(run_dir))
    cache[run_dir] = cached
    return cached[1]


# --- processes -------------------------------------------------------------------------------


def spawn_detached(run_dir: Path, resume: bool = False, extra_env: dict[str, str] | None = None,
                   launcher: list[str] | None = None) -> int:
    """Start the trainer (`core.worker`) on RUN_DIR in its own session (survives the terminal); output to train.log.

    `launcher` (e.g. `mlx.launch ... --`, see core.launch) goes before the command: then the launcher is
    the detached process, and its ranks run the command."""
    from .backend import subprocess_env

    run_dir = Path(run_dir).resolve()  # the child runs in run_dir: a relative path would be taken from there
    cmd = [*(launcher or []), *trainer_command(run_dir, resume)]
    log = open_log(run_dir)
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=subprocess_env(extra_env), cwd=run_dir,
        )
    finally:
        os.close(log)
    with contextlib.suppress(OSError):  # without the record, a trainer that dies at start is listed `new`
        atomic_write_text(RunDir(run_dir).spawn_record, json.dumps({"pid": proc.pid, "time": round(time.time(), 3)}) + "\n")
    return proc.pid


def open_log(run_dir: Path) -> int:
    """run_dir/train.log opened for appending, as a descriptor; NotRegularFile if it is a link, FIFO or device."""
    return open_regular(RunDir(run_dir).log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


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
        if process_stopped(pid):  # a paused trainer acts on the signal only once it runs again
            os.kill(pid, signal.SIGCONT)
    deadline = time.time() + timeout
    while is_locked(run_dir) and time.time() < deadline:
        time.sleep(0.1)
    if is_locked(run_dir):
        raise RunError(f"{run_dir}: trainer (pid {pid}) did not stop within {timeout:.0f} s")
    return run_info(run_dir)


def tail_log(run_dir: Path, lines: int = 20) -> list[str]:
    """The last lines of train.log (for error reports)."""
    try:
        with os.fdopen(open_regular(RunDir(run_dir).log), "rb") as f:
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
