"""What the headless commands print through: untrusted text shown, never sent as control characters;
user mistakes as one line on stderr; dataset problems as `PATH:LINE: reason`."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from tunedeck.core.text import visible

if TYPE_CHECKING:  # the dataset reader is for the commands that read data, not for every command
    from tunedeck.core.data import Problem


class UserError(Exception):
    """A mistake the user can fix: printed as one message, exit status 1."""


def fail(msg: str) -> int:
    """Print `msg` as tunedeck's error line on stderr; the exit status of a user mistake."""
    print(f"tunedeck: error: {visible(msg)}", file=sys.stderr)
    return 1


def problem_line(p: Problem) -> str:
    """`PATH:LINE: reason` for an error; warnings say so."""
    if p.severity == "error":
        return str(p)
    return f"{p.path}:{p.line}: warning: " + (f"{p.field}: {p.message}" if p.field else p.message)


class VisibleText(io.TextIOBase):
    """A text stream that shows control characters instead of sending them: every headless command prints
    through it, so untrusted text (file names, dataset and model fields, run directories, event fields)
    can never reach the terminal as an escape sequence (clipboard, title, screen clearing, bidi)."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(visible(text))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", "utf-8")


def raw_stream(stream: TextIO) -> TextIO:
    """The terminal behind a VisibleText, for output that draws with control characters of its own (the
    progress bar, which neutralises what it shows itself)."""
    return stream.raw if isinstance(stream, VisibleText) else stream


@contextlib.contextmanager
def visible_output() -> Iterator[None]:
    """sys.stdout and sys.stderr as VisibleText for the duration."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = VisibleText(out), VisibleText(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
