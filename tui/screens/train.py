"""The Train screen (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class TrainScreen(Screen):
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Train")
        yield Footer()
