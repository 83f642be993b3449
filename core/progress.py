"""A plain-text progress line for headless training (no Rich: core stays free of UI libraries).

The display fails soft: once its stream is gone (a closed pipe, `| head`; a terminal that disappeared:
EPIPE, EIO), it goes quiet and points that stream's file descriptor, and any other standard stream on
the same pipe or terminal, at a fallback file (train.log) or /dev/null, so that training, and whatever
else writes there later, carries on.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from .text import one_line

GONE = (OSError, ValueError)  # EPIPE/EIO/..., and writes to a stream that was closed under us


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _identity(fd: int) -> tuple[int, int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_rdev


def redirect(stream: TextIO, fallback: Path | None = None) -> None:
    """Point `stream`'s descriptor, and those of the standard streams open on the same file, at `fallback`
    (appended to) or /dev/null. Streams without a descriptor (StringIO) are left alone."""
    fd = _fileno(stream)
    if fd is None:
        return
    same = _identity(fd)
    fds = {fd} | {f for f in map(_fileno, (sys.stdout, sys.stderr)) if f is not None and _identity(f) == same}
    try:
        target = os.open(fallback or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        target = os.open(os.devnull, os.O_WRONLY)
    for f in fds:
        os.dup2(target, f)
    os.close(target)


def _fileno(stream: TextIO | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except GONE:
        return None


def write_soft(stream: TextIO, text: str, fallback: Path | None = None) -> bool:
    """Write and flush `text`; if the stream is gone, `redirect` it and return False."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except GONE:
        redirect(stream, fallback)
        with contextlib.suppress(*GONE):  # what was buffered now goes to the fallback
            stream.flush()
        return False


class ProgressPrinter:
    """Turns trainer events into a progress bar (TTY, redrawn in place) or one line per event (pipes).

    When its stream goes away it stops printing (`live` turns False) and redirects the stream to
    `fallback` (see `redirect`); training is not disturbed."""

    def __init__(self, out: TextIO, width: int = 24, fallback: Path | None = None) -> None:
        self.out = out
        self.width = width
        self.fallback = fallback
        self.live = True
        try:
            self.tty = out.isatty()
        except GONE:
            self.tty = False
        self._open = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step":
            total = event.get("total_steps") or 1
            self._bar(event["step"] / total, f"step {event['step']}/{total} loss {event['loss']:.4f} "
                      f"{event['tokens_per_sec']:.0f} tok/s ETA {fmt_duration(event.get('eta_sec', float('nan')))}")
        elif kind == "reference":
            done, total = event.get("done", 0), event.get("total") or 0
            self._bar(done / total if total else 1.0,
                      f"reference pass {done}/{total} sequences {event.get('rate') or 0:.1f} seq/s "
                      f"ETA {fmt_duration(event.get('eta_s'))} mem {event.get('peak_memory_gb') or 0:.2f} GB")
        else:
            self._line(kind, event)

    def _bar(self, fraction: float, text: str) -> None:
        bar = "#" * int(min(max(fraction, 0.0), 1.0) * self.width)
        line = f"[{bar:<{self.width}}] {text}"
        if self.tty:
            self._write("\r" + line + "\x1b[K")
            self._open = True
        else:
            self._write(line + "\n")

    def _line(self, kind: Any, event: dict[str, Any]) -> None:
        detail = {k: v for k, v in event.items() if k not in ("type", "step", "time")}
        if kind == "eval":
            text = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in detail.items())
        elif kind == "start":
            text = (f"{detail.get('method')} on {detail.get('train_examples')} examples, "
                    f"{detail.get('total_steps')} steps, {detail.get('trainable_params', 0):,} trainable params "
                    f"({detail.get('note')})")
        elif kind == "sample":  # core.samples: an answer of the current adapter, on one line
            mark = {True: "valid call", False: "invalid call"}.get(detail.get("valid"), "answer")
            text = f"prompt {detail.get('prompt')} {mark}: {one_line(str(detail.get('text', '')))[:100]}"
        else:
            text = str(detail.get("message") or detail.get("path") or detail.get("checkpoint") or "")
        self._write(("\n" if self._open else "") + f"{kind} @ step {event.get('step')}: {text}\n")
        self._open = False

    def _write(self, text: str) -> None:
        if self.live:
            self.live = write_soft(self.out, text, self.fallback)

    def close(self) -> None:
        if self._open:
            self._write("\n")
            self._open = False
