"""Dataset bytes → one parsed JSON object per line, with the reason for each line that is unusable.

JSONL is streamed a line at a time; a .json list is parsed whole (a line is then a list index + 1).
A line is unusable for: invalid UTF-8 (with byte offsets), a NUL byte, more than MAX_LINE_BYTES
(drained unread), invalid JSON (with column; CR-only line endings are named as such), a key repeated
in one object (JSON would keep only the last value), an integer over Python's 4,300-digit limit, or
a value that is not an object. CRLF and blank lines are accepted silently; a leading UTF-8 BOM is
dropped and reported through `on_bom`. A file's size is not trusted (/proc files report 0 and are read).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .fsutil import NotRegularFile, open_regular

MAX_LINE_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"
NOT_REGULAR = "is not a regular file (a FIFO, socket or device); expected a dataset file"


class ReadError(Exception):
    """A file that cannot be read: each reason as (1-based line or 0 for the whole file, field, message, code)."""

    def __init__(self, *problems: tuple[int, str, str, str]) -> None:
        super().__init__("\n".join(p[2] for p in problems))
        self.problems = problems


def file_error(message: str, line: int = 0, code: str = "file") -> ReadError:
    """A ReadError with one reason (about the whole file, or one line of it)."""
    return ReadError((line, "", message, code))


@dataclass(slots=True)
class Line:
    """One line of a file: its text and object, or why it is unusable."""

    line: int
    raw: str = ""
    obj: Any = None
    problem: tuple[str, str] | None = None  # (message, code) when the line is unusable


def type_name(v: Any) -> str:
    """How a JSON value's type is named in a message ("an object", "a string", "null", ...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number"}.get(type(v), type(v).__name__)


def shown(key: str, limit: int = 40) -> str:
    """A record key as printed in a message: control/bidi characters escaped, long keys cut."""
    text = key if key.isprintable() else repr(key)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


class _DupDict(dict):
    """A JSON object that repeated a key (JSON would keep only the last value); `key` is the key."""

    key: str


def json_loads(text: str) -> tuple[Any, list[str]]:
    """json.loads, and the keys that some object repeated (each such object is a _DupDict)."""
    repeated: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        counts = Counter(k for k, _ in pairs)
        dup = _DupDict(obj)
        dup.key = next(k for k, _ in pairs if counts[k] > 1)
        repeated.append(dup.key)
        return dup

    return json.loads(text, object_pairs_hook=pairs_hook), repeated


def _duplicate_key(value: Any) -> str | None:
    """A key repeated inside some object of `value` (walked without recursion), or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _DupDict):
            return v.key
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _duplicate_problem(key: str) -> tuple[str, str]:
    msg = f"invalid JSON: duplicate key \"{shown(key)}\" in one object (only the last value would count)"
    return msg, "duplicate_key"


def _long_number(text: str) -> tuple[str, int]:
    """Why json.loads raised a plain ValueError (an integer past Python's int-string digit limit), and
    the line of `text` where that number is."""
    limit = sys.get_int_max_str_digits()
    m = re.search(r"\d{%d,}" % (limit + 1), text) if limit else None
    if m is None:
        return "invalid JSON: a number too long to read", 1
    col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
    msg = f"invalid JSON: a number of {m.end() - m.start():,} digits at column {col} (at most {limit:,} are read)"
    return msg, text.count("\n", 0, m.start()) + 1


def _cr_hint(data: bytes) -> str:
    """A note for a line that holds a bare carriage return: the file's lines end with CR alone."""
    return "; the file uses CR (carriage return) line endings: save it with LF line endings" if b"\r" in data else ""


def _not_object(line: int, raw: str, obj: Any) -> Line:
    return Line(line, raw, problem=(f"expected a JSON object, got {type_name(obj)}", "not_object"))


def _parse_text(line: int, data: bytes, offset: int) -> Line:
    """Decode and parse one JSONL line (terminator already removed)."""
    if b"\x00" in data:
        return Line(line, problem=(f"contains a NUL byte at byte {data.index(0)} (binary data?)", "nul"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"invalid UTF-8 at byte {e.start} of the line (file offset {offset + e.start})"
        return Line(line, problem=(msg, "utf8"))
    try:
        obj, repeated = json_loads(text)
    except json.JSONDecodeError as e:
        code = "cr_endings" if b"\r" in data else "json"
        return Line(line, text, problem=(f"invalid JSON: {e.msg} at column {e.colno}{_cr_hint(data)}", code))
    except RecursionError:
        return Line(line, problem=("invalid JSON: nested too deeply to parse", "json"))
    except ValueError:
        return Line(line, text, problem=(_long_number(text)[0], "json"))
    if repeated:
        return Line(line, text, problem=_duplicate_problem(repeated[0]))
    if not isinstance(obj, dict):
        return _not_object(line, text, obj)
    return Line(line, text, obj)


def _read_jsonl(f: IO[bytes], hasher: Any, on_bom: Callable[[], None]) -> Iterator[Line]:
    """Yield each non-blank line of a binary file, hashing every byte read.

    A line over MAX_LINE_BYTES is drained in chunks and reported, never held in memory whole.
    """
    limit = MAX_LINE_BYTES + 2  # content plus CRLF
    offset, line = 0, 0
    while chunk := f.readline(limit):
        line += 1
        hasher.update(chunk)
        start, size = offset, len(chunk)
        drained = not chunk.endswith(b"\n") and len(chunk) == limit
        while drained and (more := f.readline(1 << 16)):
            hasher.update(more)
            size += len(more)
            if more.endswith(b"\n"):
                break
        offset += size
        data = chunk[:-1] if chunk.endswith(b"\n") else chunk
        data = data[:-1] if data.endswith(b"\r") else data
        if drained or len(data) > MAX_LINE_BYTES:
            msg = f"line is {size:,} bytes, over the 1 MB limit; not parsed{_cr_hint(data)}"
            yield Line(line, problem=(msg, "cr_endings" if b"\r" in data else "too_long"))
            continue
        if line == 1 and data.startswith(BOM):
            data, start = data[3:], start + 3
            on_bom()
        if data.strip():
            yield _parse_text(line, data, start)


def read_json_list(data: bytes, on_bom: Callable[[], None]) -> Iterator[Line]:
    """Yield the items of a .json file holding a list (line = list index + 1); ReadError if it does not parse."""
    if data.startswith(BOM):
        data = data[3:]
        on_bom()
    try:
        text = data.decode("utf-8")
        items, repeated = json_loads(text)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise file_error(f"invalid UTF-8 at file offset {e.start}", line, "utf8") from None
    except json.JSONDecodeError as e:
        raise file_error(f"invalid JSON: {e.msg} at column {e.colno}", e.lineno, "json") from None
    except RecursionError:
        raise file_error("invalid JSON: nested too deeply to parse", 0, "json") from None
    except ValueError:
        raise file_error(*_long_number(text), "json") from None
    for i, obj in enumerate(items):
        raw = json.dumps(obj, ensure_ascii=False)
        if repeated and (key := _duplicate_key(obj)) is not None:
            yield Line(i + 1, raw, problem=_duplicate_problem(key))
        elif isinstance(obj, dict):
            yield Line(i + 1, raw, obj)
        else:
            yield _not_object(i + 1, raw, obj)


def is_json_list(head: bytes) -> bool:
    """Whether a file that starts with `head` holds a JSON list (a BOM and white space may come first)."""
    return head.lstrip(BOM + b" \t\r\n").startswith(b"[")


def open_problem(path: Path) -> str | None:
    """Why `path` cannot be opened as a dataset file (missing, a directory, not regular, unreadable), or None."""
    if not path.exists():
        return "file not found"
    if path.is_dir():
        return "is a directory, not a dataset file"
    if not path.is_file():
        return NOT_REGULAR
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


@contextlib.contextmanager
def opened(path: Path) -> Iterator[IO[bytes]]:
    """`path` open for reading bytes (a link followed, a FIFO refused unread); an OSError while it is
    open becomes ReadError ("cannot be read: ...")."""
    try:
        with os.fdopen(open_regular(os.path.realpath(path)), "rb") as f:
            yield f
    except NotRegularFile:
        raise file_error(NOT_REGULAR) from None
    except OSError as e:
        raise file_error(f"cannot be read: {e.strerror or e}") from None


def read_lines(path: Path, f: IO[bytes], hasher: Any, on_bom: Callable[[], None]) -> Iterator[Line]:
    """The lines of an open file. Its size is not trusted: /proc files say 0 and still hold text."""
    head = f.read(64)
    if not head:
        raise file_error("file is empty")
    f.seek(0)
    if path.suffix.lower() == ".json" and is_json_list(head):
        data = f.read()
        hasher.update(data)
        return read_json_list(data, on_bom)
    return _read_jsonl(f, hasher, on_bom)
