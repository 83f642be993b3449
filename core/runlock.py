"""A run's lock: one trainer per run directory, and whether a trainer holds it (from any process)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from .fsutil import NotRegularFile, open_regular, read_regular
from .rundir import RunDir

REGULAR_ONLY = "a run directory's files must be regular files, not links, FIFOs or devices"


class RunError(Exception):
    """A run directory that cannot be used as asked."""


class RunLock:
    """The live trainer's claim on a run: an exclusive flock on the run directory itself (removing or
    replacing `lock` cannot let a second trainer in) and on run_dir/lock, which holds its PID. Both are
    released when the process dies. Where the filesystem cannot lock a directory (NFS), the file lock alone."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = RunDir(run_dir).lock
        self._dir_fd: int | None = None
        self._fd: int | None = None
        self.took_over_from: int | None = None

    def acquire(self, retries: int = 20) -> None:
        """Take both locks (waiting up to `retries` × 0.1 s) and write our PID; RunError if another holds them."""
        dir_fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for attempt in range(retries):
                if _try_flock(dir_fd, fcntl.LOCK_EX) is not False and (fd := self._lock_file()) is not None:
                    break
                if attempt == retries - 1:
                    pid = read_pid(self.run_dir)
                    raise RunError(f"{self.run_dir} is in use by another trainer"
                                   f"{f' (pid {pid})' if pid else ''}; stop it first with `tunedeck stop`")
                time.sleep(0.1)
        except BaseException:
            os.close(dir_fd)
            raise
        self._dir_fd = dir_fd
        old = os.read(fd, 64).decode(errors="replace").strip()
        if old.isdigit() and int(old) != os.getpid():
            self.took_over_from = int(old)
        self._write_pid(fd)

    def _lock_file(self) -> int | None:
        """run_dir/lock, flocked, still named by its path (it may be replaced while we wait); None if held."""
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)
        except NotRegularFile as e:
            raise RunError(f"{e} ({REGULAR_ONLY}): remove it") from None
        if _try_flock(fd, fcntl.LOCK_EX) and _same_file(fd, self.path):
            return fd
        os.close(fd)
        return None

    def _write_pid(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def check(self) -> str | None:
        """None while run_dir/lock is still ours; after it was removed or replaced, write it again (so that
        `tunedeck stop` and `tunedeck runs` find this trainer) and return a warning saying so."""
        if self._fd is None or _same_file(self._fd, self.path):
            return None
        os.close(self._fd)
        self._fd = None
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.stat(self.path, follow_symlinks=False).st_mode):
                os.unlink(self.path)  # a link or FIFO put in its place: remove the entry, never its target
        try:
            fd = self._lock_file()
        except (RunError, OSError) as e:
            return f"{self.path} was removed or replaced while training and cannot be written again ({e})"
        if fd is None:
            return (f"{self.path} was replaced while training and another process now holds it: "
                    "this filesystem cannot lock the run directory, so stop the other trainer")
        self._write_pid(fd)
        return f"{self.path} was removed or replaced while training; wrote it again (pid {os.getpid()})"

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def _try_flock(fd: int, how: int) -> bool | None:
    """flock(fd, how | LOCK_NB): True if taken, False if another holds it, None if the filesystem cannot."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` (not followed) still names the file open as `fd`."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def read_pid(run_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(read_regular(RunDir(run_dir).lock, 64).decode().strip())
    return None


def is_locked(run_dir: Path) -> bool:
    """True while a live trainer holds the run's lock (probed with shared, non-blocking flocks of the run
    directory and of run_dir/lock; never blocks, whatever `lock` is)."""
    for open_fd in (lambda: os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
                    lambda: open_regular(RunDir(run_dir).lock)):
        try:
            fd = open_fd()
        except OSError:
            continue
        try:
            if _try_flock(fd, fcntl.LOCK_SH) is False:
                return True
        finally:
            os.close(fd)  # closing drops a shared lock we took
    return False
