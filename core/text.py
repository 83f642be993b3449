"""Untrusted text made safe for a terminal: the one neutraliser, for the CLI and the app.

Control characters (ESC, CR, BEL, DEL, C1) and bidirectional overrides, isolates and marks (which can
reorder or hide text) become visible escapes (`\\x1b`, `\\u202e`); newlines and tabs are kept. With
`pictures=True` (the app) C0 controls and DEL become Unicode control pictures instead (ESC -> "␛"), one
cell each. Ordinary text, emoji and right-to-left scripts pass unchanged.
"""

from __future__ import annotations

import unicodedata

# bidi embeddings/overrides (U+202A-202E), isolates (U+2066-2069), marks (LRM, RLM, ALM)
_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C}


def _shown(ch: str, pictures: bool) -> str:
    o = ord(ch)
    if ch in "\n\t" or not (o in _BIDI or unicodedata.category(ch) == "Cc"):
        return ch
    if pictures and (o < 0x20 or o == 0x7F):
        return chr(0x2400 + o) if o < 0x20 else "\u2421"
    return ch.encode("unicode_escape").decode("ascii")


def visible(text: str, pictures: bool = False) -> str:
    """`text` with terminal control and bidi characters shown as escapes (or pictures); newlines, tabs kept."""
    if text.isprintable():
        return text
    return "".join(_shown(ch, pictures) for ch in text)


def one_line(text: str) -> str:
    """`visible(text)` with newlines and tabs escaped too: for table cells and one-line messages."""
    return visible(text).replace("\n", "\\n").replace("\t", "\\t")
