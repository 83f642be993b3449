"""Small modal dialogs: confirm quitting with unsaved edits, ask for a file path."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from ..safe import plain
from ..widgets.dialog_css import DIALOG_CSS


class QuitScreen(ModalScreen[str]):
    """Unsaved edits: dismisses with "save", "discard" or "cancel"."""

    DEFAULT_CSS = DIALOG_CSS.format(name="QuitScreen")
    BINDINGS = [
        Binding("s", "choose('save')", "Save", id="quit.save", tooltip="Save every unsaved edit, then quit"),
        Binding("d", "choose('discard')", "Discard", id="quit.discard", tooltip="Quit without saving"),
        Binding("escape,c", "choose('cancel')", "Cancel", id="quit.cancel", tooltip="Go back to the app"),
    ]

    def __init__(self, what: list[str]) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Quit with unsaved edits?", classes="dialog-title")
            yield Static(plain("Unsaved: " + ", ".join(self.what) + ". A detached training run keeps running either way."))
            with Horizontal():
                yield Button("Save and quit (s)", id="save", variant="primary")
                yield Button("Discard (d)", id="discard", variant="error")
                yield Button("Cancel (esc)", id="cancel")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class PathScreen(ModalScreen[str | None]):
    """Ask for a file path; dismisses with the text, or None when cancelled."""

    DEFAULT_CSS = DIALOG_CSS.format(name="PathScreen")
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="path.cancel", tooltip="Close without opening")]

    def __init__(self, title: str, value: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(plain(self.title_text), classes="dialog-title")
            yield Input(self.value, placeholder="path/to/file.toml", id="path")
            yield Static("enter opens · escape cancels", classes="dialog-hint")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
