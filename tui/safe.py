"""Untrusted text made safe to display: never markup, no terminal control characters."""

from __future__ import annotations

from textual.content import Content

from tunedeck.core.text import visible


def display(text: str) -> str:
    """`text` with control characters (other than newline and tab) replaced by visible stand-ins."""
    return visible(text, pictures=True)


def plain(text: str, style: str = "") -> Content:
    """Untrusted `text` as Content (never parsed as markup), optionally in one style."""
    return Content.styled(display(text), style)
