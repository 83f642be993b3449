"""Helpers for the reliability suite: tiny runs, in-process CLI calls, waiting on logs and processes.

Everything here is sized for a small, shared CPU: batch 2, 64-token sequences, LoRA rank 1,
OpenBLAS on one thread (several OpenBLAS threads on an oversubscribed box spin and are ~2x slower).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import small_config
from tunedeck.core import config as C
from tunedeck.core import runs

# extra environment for every training subprocess of this suite
ENV = {"OPENBLAS_NUM_THREADS": "1"}


def tiny_config(workspace: Path, method: str = "sft", n: int = 32, **train: object) -> Path:
    """small_config, shrunk further: 64-token sequences, batch 2, LoRA rank 1, no evaluation by default."""
    path = small_config(workspace, method, n=n)
    cfg, _ = C.load(path)
    cfg.data.max_seq_len = 64
    cfg.lora.rank = 1
    cfg.train.batch_size = 2
    cfg.train.eval_every = 10_000
    cfg.train.save_every = 10_000
    cfg.train.iters = 4
    for key, value in train.items():
        setattr(cfg.train, key, value)
    C.save(cfg, path)
    return path


def make_run(workspace: Path, method: str = "sft", n: int = 32, **train: object) -> Path:
    """A prepared (not started) run directory for a tiny config."""
    from tunedeck.core.run_prep import prepare_run

    config = tiny_config(workspace, method, n, **train)
    cfg, _ = C.load(config)
    return prepare_run(cfg, config, workspace / "runs")


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(*args: str) -> Result:
    """`tunedeck ARGS` in this process (fast: no interpreter or MLX start-up), stdout/stderr captured."""
    from tunedeck.tui import cli as cli_mod

    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("TUNEDECK_REEXECED")
    os.environ["TUNEDECK_REEXECED"] = "1"  # never re-exec the test process
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_mod.main([str(a) for a in args])
    finally:
        if old is None:
            os.environ.pop("TUNEDECK_REEXECED", None)
        else:
            os.environ["TUNEDECK_REEXECED"] = old
    return Result(code, out.getvalue(), err.getvalue())


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tmp_leftovers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def wait_for(pred, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_event(run_dir: Path, pred, timeout: float = 120) -> dict:
    def find():
        return next((e for e in runs.read_events(run_dir) if pred(e)), None)

    try:
        return wait_for(find, timeout, "an event", poll=0.05)
    except AssertionError:
        raise AssertionError(f"no such event; events: {runs.read_events(run_dir)[-5:]}; "
                             f"log: {runs.tail_log(run_dir)}") from None


def wait_unlocked(run_dir: Path, timeout: float = 30) -> None:
    wait_for(lambda: not runs.is_locked(run_dir), timeout, f"{run_dir} to be unlocked")


def wait_exit(pid: int, timeout: float = 30) -> int | None:
    """Reap our child `pid` (a detached trainer we spawned); its exit status, or None if reaped elsewhere."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"pid {pid} did not exit within {timeout} s")


def kill_hard(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_exit(pid, 30)


def no_control_chars(text: str) -> bool:
    """True if `text` holds no terminal control characters (C0/C1 except newline and tab, DEL, bidi overrides)."""
    bidi = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))
    return not any((ord(ch) < 32 and ch not in "\n\t") or 0x7F <= ord(ch) < 0xA0 or ord(ch) in bidi for ch in text)


def spawn(run_dir: Path, resume: bool = False, env: dict[str, str] | None = None):
    """runs.spawn_detached, keeping hold of the child's Popen so that its exit status can be read."""
    import subprocess

    captured: list[subprocess.Popen] = []
    real = subprocess.Popen

    class Capture(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured.append(self)

    subprocess.Popen = Capture  # type: ignore[misc]
    try:
        pid = runs.spawn_detached(run_dir, resume=resume, extra_env={**ENV, **(env or {})})
    finally:
        subprocess.Popen = real  # type: ignore[misc]
    (proc,) = captured
    assert proc.pid == pid
    return proc


@contextlib.contextmanager
def full_disk(root: Path, size: str = "4M"):
    """A real tmpfs of `size` mounted at `root` (as root; the test is skipped where mounting is not allowed),
    unmounted afterwards. `fill()` on the yielded object uses up the space that is left."""
    import pytest

    root.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip() or r.returncode}")
    try:
        yield _Filler(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


class _Filler:
    def __init__(self, root: Path) -> None:
        self.root = root

    def fill(self) -> None:
        """Write a filler file until the file system is full (ENOSPC)."""
        import errno

        with open(self.root / ".filler", "ab", buffering=0) as f:
            chunk = b"\0" * 65536
            while True:
                try:
                    f.write(chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        return
                    chunk = chunk[: len(chunk) // 2]

    def free(self) -> None:
        """Give the space `fill` took back."""
        (self.root / ".filler").unlink()
