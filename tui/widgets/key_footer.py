"""The footer of the current screen's main keys, rebuilt only when the keys it shows change."""

from __future__ import annotations

from collections.abc import Hashable

from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

#: key -> (action, description, tooltip, group) of a binding the footer draws
Drawn = dict[str, tuple[Hashable, ...]]


def shown_keys(screen: Screen) -> tuple[Drawn, dict[str, bool]]:
    """What a footer draws from `screen`'s active bindings (the palette key among them), and which are enabled."""
    drawn: Drawn = {}
    enabled: dict[str, bool] = {}
    for _node, b, on, tooltip in screen.active_bindings.values():
        if b.show or b.action == "command_palette":
            drawn[b.key] = (b.action, b.description, tooltip or b.tooltip, id(b.group))
            enabled[b.key] = on
    return drawn, enabled


class KeyFooter(Footer):
    """Textual's Footer recomposes on every change of focus (each field's own bindings change the active set),
    and a recompose re-lays out the whole screen. This one only recomposes when a key it has not drawn appears;
    a drawn key that a focused text field takes for typing (`w`, `?`) is dimmed in place, as it does nothing there."""

    def __init__(self) -> None:
        super().__init__()
        self._drawn: Drawn | None = None

    def bindings_changed(self, screen: Screen) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus or not self.is_attached or screen is not self.screen:
            return
        drawn, enabled = shown_keys(screen)
        if self._drawn is not None and all(self._drawn.get(k) == v for k, v in drawn.items()):
            for key in self.query(FooterKey):
                off = not enabled.get(key.key, False)
                key._disabled = off
                key.set_class(off, "-disabled")
            return
        self._drawn = drawn
        self.call_after_refresh(self.recompose)
