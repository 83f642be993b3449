"""A Static that skips updates which would not change what it shows (no needless re-layout)."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

EMPTY = Content("")


class QuietStatic(Static):
    """`update` with the same Content (text and styles) is a no-op."""

    def __init__(self, content: Content = EMPTY, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(content, id=id, classes=classes)
        self._shown = content

    def update(self, content: Content = EMPTY, *, layout: bool = True) -> None:  # type: ignore[override]
        """Show `content` (`layout=False`: its size cannot change, so only repaint)."""
        if not content.is_same(self._shown):
            self._shown = content
            super().update(content, layout=layout)
