"""The footer of the current screen's main keys, rebuilt only when the keys it shows change, and fitted to its
width: where they do not all fit, the screen's least useful keys are left out (they stay in `?` and the palette)."""

from __future__ import annotations

from collections.abc import Hashable

from textual.app import App
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel, KeyGroup

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
    a drawn key that a focused text field takes for typing (`w`, `?`) is dimmed in place, as it does nothing there.

    Where the keys are wider than the footer, it leaves out the screen's keys named in its `FOOTER_DROP` (binding
    ids, first named first), then the screen's other keys from the last; the app's own keys (quit, `?`) and the
    palette's always show."""

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

    async def recompose(self) -> None:
        """The new keys, fitted before they are first laid out (one layout for the footer, not two)."""
        await super().recompose()
        self.call_later(self._fit)

    def on_resize(self) -> None:
        self._fit()

    def _entries(self) -> list[list[Widget]]:
        """The footer's entries in order, each its widgets (a key, or a key group and its label); not the palette's."""
        entries: list[list[Widget]] = []
        for child in self.children:
            if isinstance(child, FooterLabel) and entries and isinstance(entries[-1][0], KeyGroup):
                entries[-1].append(child)
            elif isinstance(child, (FooterKey, KeyGroup)) and not child.has_class("-command-palette"):
                entries.append([child])
        return entries

    def _drop_order(self, entries: list[list[Widget]]) -> list[list[Widget]]:
        """The entries that may be left out, the first to go first."""
        active = self.screen.active_bindings
        first_names = list(getattr(self.screen, "FOOTER_DROP", ()))

        def binding(entry: list[Widget]):
            key = entry[0] if isinstance(entry[0], FooterKey) else entry[0].query_one(FooterKey)
            return active.get(key.key)

        droppable = [e for e in entries if (b := binding(e)) is not None and not isinstance(b.node, App)]
        named = sorted((e for e in droppable if binding(e).binding.id in first_names),
                       key=lambda e: first_names.index(binding(e).binding.id))
        return named + [e for e in reversed(droppable) if e not in named]

    def _cells(self, widget: Widget) -> int:
        """The cells `widget` takes in the footer's row, padding and border included (its outer width once laid
        out), from its content and styles: known before any layout."""
        size = self.app.size
        return widget.get_content_width(size, size) + widget.styles.gutter.width

    def _fit(self) -> None:
        """Show the entries that fit the footer's width."""
        entries = self._entries()
        width = self.size.width or self.app.size.width  # docked at the bottom, the screen's width
        if not entries or not width:
            return
        if any(isinstance(e[0], KeyGroup) and not e[0].children for e in entries):  # still mounting its keys
            self.call_after_refresh(self._fit)
            return
        # measured each time: at the footer's first resize a key group's keys may not have their style yet (the
        # fit after the recompose that mounted them sees it)
        widths = {id(e[0]): sum(self._cells(w) for w in e) for e in entries}
        palette = sum(self._cells(k) for k in self.query(FooterKey) if k.has_class("-command-palette"))
        # + 1: the last key's right padding (a blank cell) may lie under the palette key's border
        room, total = width - palette + 1, sum(widths.values())
        hidden: list[list[Widget]] = []
        for entry in self._drop_order(entries):
            if total <= room:
                break
            hidden.append(entry)
            total -= widths[id(entry[0])]
        for entry in entries:
            for widget in entry:
                widget.display = entry not in hidden
