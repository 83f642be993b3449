"""One config key in the form: its editor (Input, Select or Switch) and its error or warning messages."""

from __future__ import annotations

import typing
from typing import Any

from textual.app import ComposeResult
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, Switch

from tunedeck.core.config import ConfigProblem, parse_float

from ..safe import display


def field_id(key: str) -> str:
    """DOM id of the field for a dotted key: "train.batch_size" -> "field-train-batch_size"."""
    return "field-" + key.replace(".", "-")


def _on_off(value: object) -> str:
    return "on" if value else "off"


class ConfigField(Widget):
    """Editor for one dotted key; `value` reads back a typed value (or the text when it does not parse).

    A grid: name | editor (| on/off for switches), and a message row mounted on the first problem.
    """

    DEFAULT_CSS = """
    ConfigField {
        layout: grid; grid-size: 3; grid-columns: 20 1fr auto; grid-rows: auto;
        height: auto; padding: 0 1;
    }
    ConfigField .field-name { width: 1fr; color: $text; }
    ConfigField > Input, ConfigField > Select { column-span: 2; }
    ConfigField Switch, ConfigField Switch:focus { border: none; padding: 0; height: 1; width: 6; }
    ConfigField Switch:focus { background: $block-cursor-background; }
    ConfigField .switch-state { width: auto; padding-left: 1; color: $text-muted; }
    ConfigField:focus-within .field-name { color: $text-accent; text-style: bold; }
    ConfigField .field-message { column-span: 3; padding-left: 20; }
    ConfigField.-error .field-message { color: $text-error; }
    ConfigField.-warning .field-message { color: $text-warning; }
    ConfigField.-error .field-name { color: $text-error; }
    """

    def __init__(self, key: str, type_: Any, choices: tuple[Any, ...] | None, help_text: str, value: Any) -> None:
        super().__init__(id=field_id(key))
        self.key, self.type_, self.choices, self.help_text = key, type_, choices, help_text
        self.initial = value
        self._shown: list[ConfigProblem] = []
        self.editor = self._make_editor()

    def compose(self) -> ComposeResult:
        yield Label(self.key.split(".", 1)[1], markup=False, classes="field-name")
        yield self.editor
        if self.type_ is bool:
            yield Label(_on_off(self.initial), classes="switch-state")

    def _make_editor(self) -> Input | Select | Switch:
        if self.type_ is bool:
            return Switch(bool(self.initial), classes="editor")
        if self.choices:
            options = [(str(c), c) for c in self.choices]
            value = self.initial if self.initial in self.choices else self.choices[0]
            return Select(options, value=value, allow_blank=False, compact=True, classes="editor")
        return Input(self._text(self.initial), compact=True, classes="editor")

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self.query_one(".switch-state", Label).update(_on_off(event.value))

    def _text(self, value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return str(value)

    @property
    def value(self) -> Any:
        """The typed value: bool, a choice, a list of strings, an int/float (or the raw text)."""
        editor = self.editor
        if not isinstance(editor, Input):
            return editor.value
        text = editor.value
        if typing.get_origin(self.type_) is list:
            return [s.strip() for s in text.split(",") if s.strip()]
        if self.type_ in (int, float):
            parse = int if self.type_ is int else parse_float  # "1e-400" must not become a silent 0.0
            try:
                return parse(text.strip().replace("_", ""))
            except ValueError:
                return text
        return text

    @value.setter
    def value(self, value: Any) -> None:
        editor = self.editor
        if isinstance(editor, Switch):
            editor.value = bool(value)
        elif isinstance(editor, Select):
            if value in (self.choices or ()):
                editor.value = value
        else:
            editor.value = self._text(value)

    def show_problems(self, problems: list[ConfigProblem]) -> None:
        """Show this key's errors and warnings (errors first) under the editor."""
        if problems == self._shown:
            return
        self._shown = problems
        errors = [p for p in problems if p.severity == "error"]
        shown = errors or problems
        self.set_class(bool(errors), "-error")
        self.set_class(not errors and bool(problems), "-warning")
        text = Content("\n".join(("✗ " if p.severity == "error" else "⚠ ") + display(p.message) for p in shown))
        message = next(iter(self.query(".field-message")), None)
        if not problems:
            if message is not None:
                message.remove()
        elif message is None:
            self.mount(Static(text, classes="field-message"))
        else:
            message.update(text)
