"""The keys screen (`?` / f1): every binding of the app and of each screen, generated from BINDINGS."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..safe import plain


class HelpScreen(ModalScreen[None]):
    """A modal listing keys by section; `sections` is [(title, bindings)]."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help-dialog {
        width: 90%; max-width: 100; height: 90%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-title { text-style: bold; color: $text-primary; }
    HelpScreen #help-body { height: 1fr; }
    HelpScreen Grid { grid-size: 3; grid-columns: 12 18 1fr; height: auto; grid-gutter: 0 1; }
    HelpScreen .help-section { column-span: 3; text-style: bold; color: $text-accent; padding-top: 1; }
    HelpScreen .help-key { text-style: bold; color: $text-primary; }
    HelpScreen .help-tip { color: $text-muted; }
    HelpScreen #help-hint { color: $text-muted; }
    """
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "close", "Close", id="help.close", tooltip="Close the keys screen"),
    ]

    def __init__(self, sections: list[tuple[str, Iterable[Binding]]], key_display: Callable[[Binding], str]) -> None:
        super().__init__()
        self.sections = sections
        self.key_display = key_display

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog"):
            yield Static("Keys", id="help-title")
            with VerticalScroll(id="help-body"), Grid():
                for title, bindings in self.sections:
                    rows: dict[str, tuple[list[str], Binding]] = {}
                    for b in bindings:
                        keys, _first = rows.setdefault(b.action, ([], b))
                        if (shown := self.key_display(b)) not in keys:
                            keys.append(shown)
                    if not rows:
                        continue
                    yield Static(plain(title), classes="help-section")
                    for keys, b in rows.values():
                        yield Static(plain(" / ".join(keys)), classes="help-key")
                        yield Static(plain(b.description or b.action))
                        yield Static(plain(b.tooltip), classes="help-tip")
            yield Static("escape closes · ctrl+p searches every command", id="help-hint")

    def action_close(self) -> None:
        self.dismiss(None)
