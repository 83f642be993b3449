"""Command palette (ctrl+p): switch screens, run the current screen's actions, change the theme."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from tunedeck.themes import THEMES


class TunedeckCommands(Provider):
    """Every screen switch, every action bound on the screen the palette was opened from (and the screen's
    `PALETTE` of (title, help, action) commands that have no key), and the themes."""

    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        app, screen = self.app, self.screen
        out: list[tuple[str, str, Callable[[], object]]] = []
        for binding in Binding.make_bindings(app.BINDINGS):
            if binding.action.startswith("switch_mode"):
                out.append((f"Screen: {binding.description}", binding.tooltip, partial(app.run_action, binding.action)))
        seen: set[str] = set()
        name = type(screen).__name__.removesuffix("Screen")
        for binding in Binding.make_bindings(type(screen).BINDINGS):
            if binding.description and binding.action not in seen:
                seen.add(binding.action)
                out.append((f"{name}: {binding.description}", binding.tooltip,
                            partial(app.run_action, binding.action, screen)))
        for title, help_text, action in getattr(screen, "PALETTE", ()):  # a screen's commands without a key
            out.append((f"{name}: {title}", help_text, partial(app.run_action, action, screen)))
        for theme in THEMES:
            out.append((f"Theme: {theme.name}", "Switch to this theme (remembered)",
                        partial(setattr, app, "theme", theme.name)))
        return out

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            if (score := matcher.match(name)) > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
