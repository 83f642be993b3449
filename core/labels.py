"""Write label fixes from the dataset browser back into a JSONL file, byte-for-byte otherwise.

Only the top-level ``"label"`` value of each changed line is replaced (``true``/``false``); a
line without one gets ``, "label": <value>`` before its closing brace. The members of the line
are walked with json's own decoder, so a nested ``"label"`` key or the text ``"label"`` inside a
string is never touched, and the edited line is re-parsed to check that only the label changed.
Every other byte (other lines, key order, spacing, CRLF, a BOM) is kept. Line numbers are the
1-based JSONL lines `core.data.load` reports; a ``.json`` list file is not supported.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from tunedeck.core.fsutil import atomic_write_bytes, sha256_file

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


class LabelConflict(Exception):
    """The file changed on disk since it was loaded."""


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


def _backup_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = path.with_name(f"{path.name}.bak-{stamp}"), 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.bak-{stamp}-{n}"), n + 1
    return candidate


def write_labels(path: str | os.PathLike[str], changes: dict[int, bool], expected_sha256: str) -> Path:
    """Set the label of the given 1-based lines; return the path of the backup of the old file.

    Raises LabelConflict if the file's sha256 is no longer `expected_sha256`, ValueError if a line
    number does not hold a JSON object. The backup is written before the file is replaced
    (atomically).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise ValueError("label edits are supported for JSONL files only")
    old = path.read_bytes()
    if hashlib.sha256(old).hexdigest() != expected_sha256:
        raise LabelConflict(f"{path} changed on disk since it was loaded; reload it first")
    lines = old.split(b"\n")
    for line, label in changes.items():
        if not 1 <= line <= len(lines) or not lines[line - 1].strip():
            raise ValueError(f"{path}:{line}: no record on that line")
        try:
            lines[line - 1] = _edit_line(lines[line - 1], bool(label), line == 1)
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise ValueError(f"{path}:{line}: cannot set the label: {e}") from None
    backup = _backup_path(path)
    atomic_write_bytes(backup, old)
    if sha256_file(path) != expected_sha256:
        backup.unlink(missing_ok=True)
        raise LabelConflict(f"{path} changed on disk while saving; reload it first")
    atomic_write_bytes(path, b"\n".join(lines))
    return backup
