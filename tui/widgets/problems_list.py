"""Validation problems of the dataset file; enter jumps to the example on that line."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from tunedeck.core.data import Problem

from ..safe import plain


class ProblemsList(OptionList):
    """One option per problem: line, severity and reason (all escaped)."""

    @dataclass
    class Jump(Message):
        """The user chose a problem: show the example on `line` if there is one. Nested, as Textual nests a
        widget's own messages (`OptionList.OptionSelected`): it is this list's API, handled as
        `on_problems_list_jump` or `@on(ProblemsList.Jump)`."""

        line: int

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._problem_lines: list[int] = []

    def show(self, problems: list[Problem]) -> None:
        self.clear_options()
        self._problem_lines = [p.line for p in problems]
        if not problems:
            self.add_option(Option(plain("No problems found in this file.", "$text-success"), disabled=True))
            return
        self.add_options(
            Option(plain(f"line {p.line:>5}  {'error  ' if p.severity == 'error' else 'warning'}  "
                         f"{p.field + ': ' if p.field else ''}{p.message}",
                         "$text-error" if p.severity == "error" else "$text-warning"))
            for p in problems
        )
        self.highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option_index < len(self._problem_lines):
            self.post_message(self.Jump(self._problem_lines[event.option_index]))
