"""The Runs screen (placeholder until its issue lands)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class RunsScreen(Screen):
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Runs")
        yield Footer()
