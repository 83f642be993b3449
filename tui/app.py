"""The tunedeck Textual app."""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static


class TunedeckApp(App[int]):
    TITLE = "tunedeck"
    BINDINGS = [("ctrl+q", "quit", "Quit")]

    def __init__(self, workspace: Path, data: str | None = None, config: str | None = None,
                 model: str | None = None) -> None:
        super().__init__()
        self.workspace = workspace

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("tunedeck")
        yield Footer()

    def action_quit(self) -> None:
        self.exit(0)


def run_app(workspace: Path, data: str | None = None, config: str | None = None, model: str | None = None) -> int:
    result = TunedeckApp(workspace, data, config, model).run()
    return int(result or 0)
