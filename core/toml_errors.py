"""Why TOML text did not parse, as a message with the line and column it concerns (None when unknown)."""

from __future__ import annotations

import re
import sys

_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")

Where = tuple[str, int | None, int | None]  # (message, line, column)


def syntax_error(text: str, msg: str) -> Where:
    """A TOMLDecodeError's message at its line and column; "at end of document" (a file cut short) is
    placed after the last line that is not blank."""
    if m := _TOML_POS.search(msg):
        return f"invalid TOML: {_TOML_POS.sub('', msg).strip()}", int(m.group(1)), int(m.group(2))
    if "(at end of document)" not in msg:
        return f"invalid TOML: {msg}", None, None
    lines = text.removeprefix("\ufeff").splitlines() or [""]
    line = max((i for i, s in enumerate(lines) if s.strip()), default=0)
    reason = msg.replace("(at end of document)", "").strip()
    return f"invalid TOML: {reason} at the end of the file (is it cut short?)", line + 1, len(lines[line]) + 1


def long_integer_error(text: str) -> Where:
    """Where a TOML integer has more digits than Python converts (sys.get_int_max_str_digits)."""
    limit = sys.get_int_max_str_digits()
    for m in re.finditer(r"[0-9][0-9_]*", text):
        digits = len(m.group().replace("_", ""))
        if limit and digits > limit:
            line = text.count("\n", 0, m.start()) + 1
            col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
            return f"invalid TOML: an integer of {digits:,} digits (at most {limit:,} are read)", line, col
    return "invalid TOML: a number too long to read", None, None
