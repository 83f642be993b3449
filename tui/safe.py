"""Untrusted text made safe to display: never markup, no terminal control characters."""

from __future__ import annotations

from textual.content import Content

# C0 controls (but newline and tab) and DEL become Unicode control pictures (ESC -> "␛");
# C1 controls and bidirectional overrides become visible escapes ("\x9b", "\u202e").
_TABLE: dict[int, str] = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A)}
_TABLE[0x7F] = "\u2421"
_TABLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
_TABLE.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def display(text: str) -> str:
    """`text` with control characters (other than newline and tab) replaced by visible stand-ins."""
    return text.translate(_TABLE)


def plain(text: str, style: str = "") -> Content:
    """Untrusted `text` as Content (never parsed as markup), optionally in one style."""
    return Content.styled(display(text), style)
