"""The Train screen's event log: a RichLog that wraps its lines at its width again whenever that width changes
(RichLog wraps a line once, as it is written: a log filled before the screen's narrow layout applied kept the
wide layout's 14-column lines)."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

MAX_LINES = 1000


class EventLog(RichLog):
    """`add` a line; `clear` forgets them all."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        # min_width: lines wrap at the log's own width (RichLog's default, 78, cut them when narrower)
        super().__init__(id=id, max_lines=MAX_LINES, wrap=True, markup=False, min_width=10)
        self._texts: deque[Text] = deque(maxlen=MAX_LINES)
        self._wrapped_at = 0

    def add(self, text: Text) -> None:
        self._texts.append(text)
        self.write(text)

    def clear(self) -> EventLog:
        self._texts.clear()
        super().clear()
        return self

    def on_resize(self, event: Resize) -> None:
        """Every line again at the new width, when it changed (the first size: RichLog's own handler, which runs
        next, writes what waited for it)."""
        width = self.scrollable_content_region.width
        if self._wrapped_at and width != self._wrapped_at and self._texts:
            super().clear()
            for text in self._texts:
                self.write(text)
        self._wrapped_at = width
