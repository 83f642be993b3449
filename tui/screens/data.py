"""The Data screen (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class DataScreen(Screen):
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Data")
        yield Footer()
