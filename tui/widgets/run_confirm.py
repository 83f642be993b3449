"""A yes/no modal for actions on runs (stop, delete)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from ..safe import plain
from .dialog_css import DIALOG_CSS


class ConfirmRun(ModalScreen[bool]):
    """Dismisses with True on `y`/the confirm button, False on `n`/escape."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmRun")
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes", tooltip="Go ahead"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no", tooltip="Go back"),
    ]

    def __init__(self, title: str, body: str, confirm: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm = confirm

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(plain(self.title_text), classes="dialog-title")
            yield Static(plain(self.body))
            with Horizontal():
                yield Button(f"{self.confirm} (y)", id="yes", variant="error")
                yield Button("Cancel (n)", id="no")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
