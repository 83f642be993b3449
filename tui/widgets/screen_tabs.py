"""The screen bar under the header: the five screens with their keys (click one to switch), the active one
highlighted, and a badge that stays while the dataset has lines set aside."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.content import Content
from textual.events import Click

from .quiet_static import QuietStatic

if TYPE_CHECKING:
    from ..app import TunedeckApp

SCREENS = ("data", "config", "train", "chat", "runs")


class ScreenTabs(QuietStatic):
    """` 1 Data  2 Config  3 Train  4 Chat  5 Runs ` for the screen of mode `active`."""

    DEFAULT_CSS = """
    ScreenTabs { height: 1; background: $panel; color: $text-muted; }
    """

    def __init__(self, active: str) -> None:
        super().__init__(id="screen-tabs")
        self.active = active
        self.spans: list[tuple[int, int, str]] = []  # (first cell, end cell, mode) of each tab

    def on_mount(self) -> None:
        cast("TunedeckApp", self.app).state_changed_signal.subscribe(self, self._state_changed)
        self._draw()

    def _state_changed(self, fields: frozenset[str]) -> None:
        if "dataset" in fields:
            self._draw()

    def _draw(self) -> None:
        """Draw the tabs and the set-aside badge (from the app's last loaded dataset)."""
        parts: list[Content | tuple[str, str] | str] = []
        self.spans = []
        cell = 0
        for n, mode in enumerate(SCREENS, 1):
            label = f" {n} {mode.title()} "
            style = "bold reverse $primary" if mode == self.active else ""
            parts += [(label, style), " "]
            self.spans.append((cell, cell + len(label), mode))
            cell += len(label) + 1
        dataset = cast("TunedeckApp", self.app).state.dataset
        if dataset is not None and dataset.skipped:
            lines = "line" if dataset.skipped == 1 else "lines"
            parts += [" ", (f" ⚠ {dataset.skipped} {lines} set aside (Data: p lists them) ", "bold $text-warning")]
        self.update(Content.assemble(*parts))

    def mode_at(self, x: int) -> str | None:
        """The screen whose tab covers cell `x`, if any."""
        return next((mode for first, end, mode in self.spans if first <= x < end), None)

    async def on_click(self, event: Click) -> None:
        mode = self.mode_at(event.x)
        if mode is not None and mode != self.app.current_mode:
            await self.app.run_action(f"switch_mode('{mode}')")
