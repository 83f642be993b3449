"""A one-line spinner with a message, shown while something loads in the background."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.timer import Timer
from textual.widget import Widget

from ..safe import display

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class BusyLine(Widget):
    """Hidden while `message` is empty; otherwise a spinner and the message."""

    DEFAULT_CSS = """
    BusyLine { height: auto; display: none; color: $text-accent; }
    BusyLine.-busy { display: block; }
    """
    message: reactive[str] = reactive("")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._frame = 0
        self._timer: Timer | None = None

    def _spin(self) -> None:
        self._frame = (self._frame + 1) % len(FRAMES)
        self.refresh()

    def watch_message(self, message: str) -> None:
        self.set_class(bool(message), "-busy")
        if message and self._timer is None:
            self._timer = self.set_interval(0.1, self._spin)
        elif not message and self._timer is not None:
            self._timer.stop()
            self._timer = None

    def render(self) -> Content:
        return Content.assemble((FRAMES[self._frame], "bold"), " ", display(self.message))
