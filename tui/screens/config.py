"""The Config screen: a form over every config key, validated as you type, with live TOML and memory forecast."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import tomli_w
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Header, Input, Select, Static, Switch, TextArea

from tunedeck.core import config as C
from tunedeck.core import forecast
from tunedeck.core.config_help import HELP
from tunedeck.core.data import DataError, load, suggest_kto_weights

from ..messages import ConfigApplied
from ..safe import display, plain
from ..widgets.config_field import ConfigField
from ..widgets.forecast_panel import ForecastPanel, forecast_lengths
from ..widgets.key_footer import KeyFooter
from ..widgets.quiet_static import QuietStatic
from .base import TunedeckScreen
from .dialogs import PathScreen

FormValues = dict[str, dict[str, Any]]
FORM_HINT = Content.styled("tab / shift+tab move between fields · escape leaves a field · ctrl+s saves", "$text-muted")


class ConfigScreen(TunedeckScreen):
    """Edit the TOML config through a generated form; errors and warnings appear beside each field."""

    CSS_PATH = "config.tcss"
    AUTO_FOCUS = ""  # no field grabs the digits 1-5 on arrival; tab enters the form
    NARROW = 76  # below this width the side panel (forecast, TOML) is hidden
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="config.save", tooltip="Write the config to its TOML file (atomically)"),
        Binding("ctrl+o", "open", "Open", id="config.open", tooltip="Open another TOML config file"),
        Binding("w", "suggest_weights", "KTO weights", id="config.weights",
                tooltip="Set kto.desirable_weight / undesirable_weight from the dataset's label balance"),
        Binding("escape", "leave_field", "Leave field", show=False, id="config.leave",
                tooltip="Leave the field, so that single-key shortcuts (1-5, w, ?) work"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.baseline: FormValues | None = None  # the form as last loaded or saved (None: differs from the file)
        self.file_note: Content = Content("")  # what was wrong with the file when it was opened
        self.fields: dict[str, ConfigField] = {}
        self._validate_pending = False

    def compose(self) -> ComposeResult:
        cfg = self.state.config
        yield Header()
        yield QuietStatic(id="banner")
        with Horizontal(id="body"):
            with VerticalScroll(id="form"):
                for section in C.SECTIONS:
                    yield Static(f"[{section}]", classes="section-title", markup=False)
                    for key, type_ in C.FIELD_TYPES.items():
                        if key.startswith(section + "."):
                            f = ConfigField(key, type_, C.CHOICES.get(key), HELP.get(key, ""), C.get_value(cfg, key))
                            self.fields[key] = f
                            yield f
            with Vertical(id="side"):
                yield Static("Memory forecast", classes="panel-title")
                yield ForecastPanel(id="forecast")
                yield Static("TOML", classes="panel-title")
                yield TextArea(id="toml", read_only=True, soft_wrap=False, highlight_cursor_line=False)
        yield QuietStatic(FORM_HINT, id="field-help")
        yield KeyFooter()

    def on_resize(self, event: events.Resize) -> None:
        """Hide the side panel on narrow terminals (toggling one widget, cheaper than restyling the form)."""
        self.query_one("#side").display = event.size.width >= self.NARROW

    def on_mount(self) -> None:
        self.query_one("#toml", TextArea).match_cursor_bracket = False
        self.baseline = self.form_values()
        path = self.state.config_path
        if path.is_file():
            self.open_file(path, apply=False)
        self._validate()
        self.tapp.state_changed_signal.subscribe(self, self._state_changed)

    def _state_changed(self, fields: frozenset[str]) -> None:
        """The Data screen counted the dataset's tokens (or dropped them): forecast with its own lengths."""
        if "token_lengths" in fields:
            self._schedule_validate()

    # ---------------------------------------------------------------- the form

    def field(self, key: str) -> ConfigField:
        return self.fields[key]

    def form_values(self) -> FormValues:
        """{section: {name: value}} as typed (values that do not parse stay text)."""
        out: FormValues = {section: {} for section in C.SECTIONS}
        for key, f in self.fields.items():
            section, name = key.split(".", 1)
            out[section][name] = f.value
        return out

    @on(Input.Changed, ".editor")
    @on(Select.Changed, ".editor")
    @on(Switch.Changed, ".editor")
    def _edited(self) -> None:
        self._schedule_validate()

    def _schedule_validate(self) -> None:
        """Validate once after the next refresh, however many changes arrive before it."""
        if not self._validate_pending:
            self._validate_pending = True
            self.call_after_refresh(self._validate)

    def _validate(self) -> None:
        """Rebuild the config from the form: field messages, TOML, forecast, app state, dirty flag."""
        self._validate_pending = False
        values = self.form_values()
        cfg, problems = C.from_dict(values)
        by_key: dict[str, list[C.ConfigProblem]] = {}
        for p in problems:
            by_key.setdefault(p.key, []).append(p)
        for key, f in self.fields.items():
            f.show_problems(by_key.get(key, []))
        errors = C.errors(problems)
        self.query_one("#toml", TextArea).text = cfg.to_toml() if not errors else tomli_w.dumps(values)
        self.set_unsaved("config", values != self.baseline)
        self._update_banner(len(errors), len(problems) - len(errors))
        if errors:
            self.query_one(ForecastPanel).show_message("Fix the fields marked ✗ to see the forecast.")
            return
        state = self.state
        if cfg != state.config or state.resolve_data_path(cfg.data.path) != state.data_path:
            self.post_message(ConfigApplied(cfg))  # the app's config as it is leaves a run's adopted config adopted
        self._forecast(cfg)

    def _update_banner(self, n_errors: int, n_warnings: int) -> None:
        state = self.state
        path = state.config_path
        shown = path.relative_to(state.workspace) if path.is_relative_to(state.workspace) else path
        if "config" in state.dirty:
            status = "unsaved changes"
        elif not path.is_file():
            status = "not saved yet"
        else:
            status = "the file has problems (below)" if self.file_note else "saved"
        parts: list[Content | tuple[str, str] | str] = [
            ("editing ", "$text-muted"), plain(str(shown), "bold"), (f" · {status}", "$text-muted"),
        ]
        if n_errors:
            parts.append((f" · {n_errors} error{'s' if n_errors > 1 else ''}", "bold $text-error"))
        if n_warnings:
            parts.append((f" · {n_warnings} warning{'s' if n_warnings > 1 else ''}", "$text-warning"))
        if self.file_note:
            parts += ["\n", self.file_note]
        self.query_one("#banner", QuietStatic).update(Content.assemble(*parts))

    @work(exclusive=True, group="forecast")
    async def _forecast(self, cfg: C.Config) -> None:
        panel = self.query_one(ForecastPanel)
        try:
            fc = await asyncio.to_thread(partial(forecast.forecast, cfg, budget_gb=self.state.memory_budget_gb,
                                                 **forecast_lengths(self.state, cfg.data.max_seq_len)))
        except Exception as e:  # an unknown model, an unreadable config.json: shown, never fatal
            panel.show_message(f"No forecast: {e}")
        else:
            panel.show(fc)

    @on(events.DescendantFocus)
    @on(events.DescendantBlur)
    def _show_field_help(self) -> None:
        """The focused field's help under the form (a hint when no field has focus)."""
        focused = self.focused
        field = next((n for n in focused.ancestors_with_self if isinstance(n, ConfigField)), None) if focused else None
        help_line = self.query_one("#field-help", QuietStatic)
        # a fixed height and width: a new line repaints, never re-lays out the form
        if field is None:
            help_line.update(FORM_HINT, layout=False)
        else:
            help_line.update(Content.assemble((field.key, "bold $text-accent"), "  ", plain(field.help_text, "$text-muted")),
                             layout=False)

    # ---------------------------------------------------------------- files

    def action_open(self) -> None:
        self.app.push_screen(PathScreen("Open a config file (TOML)", str(self.state.config_path)), self._open_chosen)

    def _open_chosen(self, path: str | None) -> None:
        if path:
            p = Path(path).expanduser()
            self.open_file(p if p.is_absolute() else self.state.workspace / p)

    @work(exclusive=True, group="config-file")
    async def open_file(self, path: Path, apply: bool = True) -> None:
        """Read a TOML config; with `apply`, make it the file being edited and load it into the form.

        A missing file becomes a new one; invalid TOML is reported with its line and column.
        """
        if not path.exists() and not path.is_symlink():
            text = None
        else:
            try:  # refuses a FIFO, socket or device at once (never waits on it), names the file otherwise
                text = await asyncio.to_thread(C.read_text, path)
            except C.ConfigError as e:
                self.notify(display(f"Cannot open {path}: {e.problems[0].message if e.problems else e}"),
                            severity="error", markup=False)
                return
        if apply:
            self.tapp.update_state(config_path=path.resolve())
        if text is None:
            self.file_note = plain(f"{path.name} does not exist yet: ctrl+s creates it.", "$text-warning")
            self.baseline = None
        else:
            raw, problems = C.parse_toml(text)
            if raw is None:
                self.file_note = self._syntax_note(path, text, problems[0])
                if apply:
                    self.baseline = None
            else:
                _cfg, problems = C.from_dict(raw)
                self.file_note = self._problems_note(path, problems)
                if apply:
                    self._fill(raw)
                    self.baseline = self.form_values()
        self._validate()

    def _fill(self, raw: dict[str, Any]) -> None:
        """Put a parsed file's values into the form (keys it lacks get their defaults)."""
        defaults = C.Config()
        with self.app.batch_update():
            for f in self.fields.values():
                section, name = f.key.split(".", 1)
                body = raw.get(section)
                f.value = body[name] if isinstance(body, dict) and name in body else C.get_value(defaults, f.key)

    @staticmethod
    def _syntax_note(path: Path, text: str, problem: C.ConfigProblem) -> Content:
        line, col = problem.line or 1, problem.column or 1
        lines = text.splitlines()
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        return Content.assemble(
            plain(f"{path.name}: {problem.message} at line {line}, column {col}\n", "bold $text-error"),
            plain(f"  {source}\n", "$text-muted"), (f"  {' ' * (col - 1)}^\n", "bold $text-error"),
            ("The form keeps the previous values: ctrl+s overwrites the file with them; ctrl+o opens another.",
             "$text-warning"),
        )

    @staticmethod
    def _problems_note(path: Path, problems: list[C.ConfigProblem]) -> Content:
        errors = C.errors(problems)
        if not errors:
            return Content("")
        lines = "\n".join(f"  {p}" for p in errors[:6]) + ("\n  …" if len(errors) > 6 else "")
        return plain(f"{path.name} had {len(errors)} error(s) when opened (unknown keys are dropped on save):\n{lines}",
                     "$text-error")

    async def action_save(self) -> None:
        await self.save_changes()

    async def save_changes(self) -> bool:
        """Write the form to the config file atomically; False (and a message) if it has errors."""
        values = self.form_values()
        cfg, problems = C.from_dict(values)
        if errors := C.errors(problems):
            self.notify(f"Not saved: {len(errors)} field error(s), marked ✗.", severity="error")
            return False
        path = self.state.config_path
        try:
            await asyncio.to_thread(C.save, cfg, path, True)
        except OSError as e:
            self.notify(display(f"Not saved: {e}"), severity="error", markup=False)
            return False
        self.baseline, self.file_note = values, Content("")
        self._validate()
        self.notify(display(f"Saved {path.name}."), markup=False)
        return True

    # ---------------------------------------------------------------- actions

    def action_leave_field(self) -> None:
        self.query_one("#form").focus()

    def action_suggest_weights(self) -> None:
        self._suggest_weights(self.state.resolve_data_path(str(self.field("data.path").value)))

    @work(exclusive=True, group="weights")
    async def _suggest_weights(self, path: Path) -> None:
        ds = self.state.dataset
        if ds is None or ds.path != path:
            try:
                ds = await asyncio.to_thread(load, path, None, False)
            except DataError as e:
                self.notify(display(f"Cannot read {path.name}: {e}"), severity="error", markup=False)
                return
        wd, wu = suggest_kto_weights(ds.desirable, ds.undesirable)
        self.field("kto.desirable_weight").value = wd
        self.field("kto.undesirable_weight").value = wu
        self.notify(f"From {ds.desirable} desirable / {ds.undesirable} undesirable examples: "
                    f"desirable_weight {wd}, undesirable_weight {wu}.")
