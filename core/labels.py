"""Write label fixes from the dataset browser back into a JSONL file, byte-for-byte otherwise.

Only the top-level ``"label"`` value of each changed line is replaced (``true``/``false``); a
line without one gets ``, "label": <value>`` before its closing brace. The members of the line
are walked with json's own decoder, so a nested ``"label"`` key or the text ``"label"`` inside a
string is never touched, and the edited line is re-parsed to check that only the label changed.
Every other byte (other lines, key order, spacing, CRLF, a BOM) is kept. Line numbers are the
1-based JSONL lines `core.data.load` reports; a ``.json`` list file is not supported.

Other writers never lose data. The whole read-check-replace holds an exclusive ``flock`` on the
dataset file (a second saver is refused at once; the path must still name the locked inode). The
save is refused (nothing written) when another process has the file open for writing (seen through
/proc on Linux, psutil elsewhere) or when its size, mtime or inode moved, checked right before the
rename and, with a writer scan, right after it; after the rename the original inode (kept by a second
hard link) is put back, with any bytes written to the new file meanwhile appended. A symlink is written
through (the link stays a link); a file with several hard links is rewritten in its own inode. Only
the newest `labels.keep_backups` backups (settings.toml) are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import psutil

from tunedeck.core.fsutil import atomic_write_bytes, fsync_dir, open_regular
from tunedeck.core.settings import label_backups_to_keep

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"
_BACKUP = re.compile(r"\.bak-(\d{8}-\d{6})(?:-(\d+))?")


class LabelConflict(Exception):
    """The file changed on disk since it was loaded, or another program is writing or saving it."""


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _label_span(text: str) -> tuple[int, int] | int:
    """(start, end) of the top-level "label" value, or the insertion index if there is none."""
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _skip_ws(text, i + 1)
    last_end = None
    while text[i : i + 1] != "}":
        key, i = _DECODER.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] != ":":
            raise ValueError("malformed object")
        start = _skip_ws(text, i + 1)
        _, end = _DECODER.raw_decode(text, start)
        if key == "label":
            return start, end
        last_end = end
        i = _skip_ws(text, end)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return last_end if last_end is not None else i


def _relabel(text: str, label: bool) -> str:
    """`text` (one JSON object) with its top-level label set to `label`."""
    old = json.loads(text)
    value = "true" if label else "false"
    span = _label_span(text)
    if isinstance(span, tuple):
        new = text[: span[0]] + value + text[span[1] :]
    elif old:
        new = text[:span] + f', "label": {value}' + text[span:]
    else:
        new = text[:span] + f'"label": {value}' + text[span:]
    if json.loads(new) != {**old, "label": label}:
        raise ValueError("label edit did not round-trip")
    return new


def _edit_line(raw: bytes, label: bool, first: bool) -> bytes:
    """Relabel one line's bytes, keeping its BOM and CR terminator."""
    bom = b"\xef\xbb\xbf" if first and raw.startswith(b"\xef\xbb\xbf") else b""
    cr = b"\r" if raw.endswith(b"\r") else b""
    body = raw[len(bom) : len(raw) - len(cr)]
    text = body.decode("utf-8")
    if json.loads(text).get("label") is label:
        return raw
    return bom + _relabel(text, label).encode("utf-8") + cr


def _backups(path: Path) -> list[tuple[tuple[str, int], str]]:
    """((stamp, n), path) of each backup of `path` (only names `_backup_path` makes), oldest first."""
    found = []
    for entry in os.scandir(path.parent):
        m = _BACKUP.fullmatch(entry.name[len(path.name):]) if entry.name.startswith(path.name) else None
        if m and entry.is_file(follow_symlinks=False):
            found.append(((m[1], int(m[2] or 0)), entry.path))
    return sorted(found)


def _backup_path(path: Path) -> Path:
    """A new backup name that sorts after every existing backup made this second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = max((k[1] + 1 for k, _ in _backups(path) if k[0] == stamp), default=0)
    return path.with_name(f"{path.name}.bak-{stamp}" + (f"-{n}" if n else ""))


def _prune_backups(path: Path, backup: Path, keep: int) -> None:
    """Delete the oldest backups of `path` until `keep` are left, never `backup` (the new one)."""
    others = [p for _, p in _backups(path) if p != str(backup)]
    for old in others[: max(len(others) - keep + 1, 0)]:
        with contextlib.suppress(OSError):
            os.unlink(old)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[tuple[int, os.stat_result]]:
    """A read-only fd of `path` (a regular file) under an exclusive flock, and its stat; refused if another
    saver holds the lock or `path` no longer names the locked inode."""
    fd = open_regular(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabelConflict(f"{path} is being saved by another program; try again") from None
        except OSError as e:
            raise OSError(e.errno, f"cannot lock the file: {e.strerror}", str(path)) from None
        st = os.fstat(fd)
        if not _same(st, os.stat(path)):
            raise LabelConflict(f"{path} changed on disk while saving; reload it first")
        yield fd, st
    finally:
        os.close(fd)


def _read_fd(fd: int) -> bytes:
    with open(fd, "rb", closefd=False) as f:
        f.seek(0)
        return f.read()


def _fd_writable(pid: str, fd: str) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
        flags = next((line.split()[1] for line in f if line.startswith("flags:")), "0")
    return int(flags, 8) & os.O_ACCMODE != os.O_RDONLY


def _proc_writers(st: os.stat_result) -> set[int]:
    """Pids with the inode of `st` open for writing, from /proc/*/fd (unreadable processes skipped)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError, ValueError):
                    s = os.stat(f"/proc/{pid}/fd/{fd}")
                    if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino) and _fd_writable(pid, fd):
                        found.add(int(pid))
    return found


def _psutil_openers(st: os.stat_result) -> set[int]:
    """Other pids with the file of `st` open (psutil cannot tell the mode here), where psutil can see."""
    found = set()
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            for f in proc.open_files():
                with contextlib.suppress(OSError):
                    s = os.stat(f.path)
                    if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                        found.add(proc.pid)
    return found


def _writers(st: os.stat_result) -> list[str]:
    """'pid N (name)' for each process that has the file of `st` open and may write to it."""
    pids = _proc_writers(st) if os.path.isdir("/proc/self/fd") else _psutil_openers(st)
    names = []
    for pid in sorted(pids):
        try:
            names.append(f"pid {pid} ({psutil.Process(pid).name()})")
        except psutil.Error:
            names.append(f"pid {pid}")
    return names


def _check_untouched(path: Path, fd: int, st: os.stat_result) -> None:
    """Refuse if a process has the file open for writing, or it changed since `st` was taken."""
    if who := _writers(st):
        raise LabelConflict(f"{path} is open for writing in another program ({', '.join(who)}); "
                            "close it, then save again")
    if not (_same(os.fstat(fd), st) and _same(os.stat(path), st)):
        raise LabelConflict(f"{path} changed on disk while saving; reload it first")


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a new fsynced temp file beside `path`, with `path`'s permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode & 0o7777)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _alias(path: Path) -> Path | None:
    """A second hard link to `path`'s inode, so it can be put back; None where hard links are unsupported."""
    alias = path.with_name(f".{path.name}.{os.getpid()}-{time.monotonic_ns()}.orig.tmp")
    try:
        os.link(path, alias)
    except OSError:
        return None
    return alias


def _put_back(path: Path, fd: int, alias: Path | None, fresh: BinaryIO, size: int) -> None:
    """Make the original inode `path` again (a copy of its bytes without an alias), plus any bytes
    written to the new file (`fresh`, `size` bytes written by us) since the rename."""
    if alias is not None:
        os.replace(alias, path)
    else:
        atomic_write_bytes(path, _read_fd(fd))
    fresh.seek(size)
    if stray := fresh.read():
        with open(path, "ab") as f:
            f.write(stray)
            f.flush()
            os.fsync(f.fileno())


def _replace(path: Path, fd: int, st: os.stat_result, new: bytes) -> None:
    """Rename a new file with `new` over `path`; refuse (the original back in place) if it was written."""
    tmp = _write_temp(path, new, st.st_mode)
    alias = _alias(path)
    try:
        with open(tmp, "rb") as fresh:
            _check_untouched(path, fd, st)
            os.replace(tmp, path)
            if _writers(st) or not _same(os.fstat(fd), st):
                _put_back(path, fd, alias, fresh, len(new))
                raise LabelConflict(f"{path} was written to by another program while saving; "
                                    "nothing was saved, reload it first")
    finally:
        for p in (tmp, alias):
            if p is not None:
                p.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _write_in_place(path: Path, fd: int, st: os.stat_result, old: bytes, new: bytes) -> None:
    """Overwrite `path`'s own inode (its other hard links see the change) after a temp copy of `new`
    has shown there is room; on a write error the old bytes are put back."""
    tmp = _write_temp(path, new, st.st_mode)
    try:
        _check_untouched(path, fd, st)
        with os.fdopen(open_regular(path, os.O_RDWR), "r+b") as f:
            if not _same(os.fstat(f.fileno()), st):
                raise LabelConflict(f"{path} changed on disk while saving; reload it first")
            try:
                f.write(new)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                f.seek(0)
                f.write(old)
                f.truncate()
                f.flush()
                raise
    finally:
        tmp.unlink(missing_ok=True)


def write_labels(path: str | os.PathLike[str], changes: dict[int, bool], expected_sha256: str) -> Path:
    """Set the label of the given 1-based lines; return the path of the backup of the old file.

    Raises LabelConflict (nothing written) if the file's sha256 is no longer `expected_sha256`, it is
    being saved or written by another program, or it changes during the save; ValueError if a line
    number does not hold a JSON object. The backup is written beside the real file (a symlink is
    followed) before the file is replaced; then only the newest `labels.keep_backups` (settings.toml;
    ValueError if it is not an integer >= 1) backups are kept.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise ValueError("label edits are supported for JSONL files only")
    keep = label_backups_to_keep()
    path = path.resolve(strict=True)
    with _locked(path) as (fd, st):
        old = _read_fd(fd)
        if hashlib.sha256(old).hexdigest() != expected_sha256:
            raise LabelConflict(f"{path} changed on disk since it was loaded; reload it first")
        new = _relabel_lines(path, old, changes)
        backup = _backup_path(path)
        atomic_write_bytes(backup, old)
        try:
            if st.st_nlink > 1:
                _write_in_place(path, fd, st, old, new)
            else:
                _replace(path, fd, st, new)
        except BaseException:
            backup.unlink(missing_ok=True)
            raise
        _prune_backups(path, backup, keep)
    return backup


def _relabel_lines(path: Path, old: bytes, changes: dict[int, bool]) -> bytes:
    """`old` with the labels of the given 1-based lines set; ValueError naming the file and line."""
    lines = old.split(b"\n")
    for line, label in changes.items():
        if not 1 <= line <= len(lines) or not lines[line - 1].strip():
            raise ValueError(f"{path}:{line}: no record on that line")
        try:
            lines[line - 1] = _edit_line(lines[line - 1], bool(label), line == 1)
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise ValueError(f"{path}:{line}: cannot set the label: {e}") from None
    return b"\n".join(lines)
