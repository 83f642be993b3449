"""The tunedeck Textual app: five screens (Data, Config, Train, Chat, Runs) on the keys 1-5."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.reactive import var
from textual.screen import Screen
from textual.signal import Signal
from textual.widgets import Header
from textual.worker import WorkerState

from tunedeck.core import config as C
from tunedeck.core.fsutil import atomic_write_text
from tunedeck.core.orchestrate import find_running
from tunedeck.core.settings import read_settings, save_settings
from tunedeck.themes import DEFAULT_THEME, STYLESHEET, THEMES

from . import heap
from .commands import TunedeckCommands
from .messages import ConfigApplied
from .safe import display
from .screens.data import DataScreen
from .screens.dialogs import QuitScreen
from .screens.help import HelpScreen
from .state import CONFIG_NAME, AppState, ModelStatus
from .widgets.screen_tabs import ScreenTabs

SCREENSHOTS = "screenshots"  # under the workspace: where the palette's Screenshot saves
WARM_AFTER_IDLE = 2.0  # seconds without input before the app builds the Config screen ahead of its first visit
SCREENS = Path(__file__).parent / "screens"
# mode -> the module under tui/screens/ and the class of its screen; the module's stylesheet is `<module>.tcss`
SCREEN_CLASSES = {mode: (mode, f"{mode.title()}Screen") for mode in ("data", "config", "train", "chat", "runs")}
HEADER_FIELDS = frozenset({"data_path", "model", "active_run", "adopted_run"})  # the AppState fields the header shows


def _stylesheets() -> list[Path]:
    """The global stylesheet plus every screen's, so all load once at startup (a screen's own CSS would otherwise
    restyle the whole app on its first visit), without importing the screens (`screen_class`)."""
    return [STYLESHEET, *(SCREENS / f"{module}.tcss" for module, _ in SCREEN_CLASSES.values())]


@cache
def screen_class(mode: str) -> type[Screen]:
    """The screen class of `mode` with the screen bar, its module imported on first use: only the first screen's
    modules are imported before the first frame (the others' plots, forms and runs lists: a quarter of a second
    on a slow CPU); the app imports them when the user pauses (`TunedeckApp._warm_up`)."""
    module, name = SCREEN_CLASSES[mode]
    return with_tabs(mode, getattr(importlib.import_module(f"{__package__}.screens.{module}"), name))


def with_tabs(mode: str, cls: type[Screen]) -> type[Screen]:
    """`cls` with the screen bar under its header (a subclass of the same name: CSS and tests that name the
    class still apply). Its CSS_PATH (`<module>.tcss`) is loaded once for the whole app (`_stylesheets`)."""

    def compose(self: Screen) -> ComposeResult:
        for widget in cls.compose(self):
            yield widget
            if isinstance(widget, Header):
                yield ScreenTabs(mode)

    return type(cls.__name__, (cls,), {"compose": compose, "CSS_PATH": None, "__module__": cls.__module__,
                                       "__doc__": cls.__doc__})


def initial_state(workspace: Path, data: str | None, config: str | None, model: str | None) -> AppState:
    """Resolve what to open: explicit options, else the live run's frozen config (re-opened over a detached
    run: its dataset and model, not the workspace's), else workspace/tunedeck.toml, else the bundled demo."""
    workspace = workspace.resolve()
    config_path = Path(config).resolve() if config else workspace / CONFIG_NAME
    live = find_running(workspace / "runs")
    adopted = live if live is not None and not (config or data or model) else None
    source = adopted / "config.toml" if adopted else config_path
    cfg = None
    if source.is_file():
        try:
            cfg, _ = C.load(source)
        except C.ConfigError:  # the Config screen shows the file's errors
            adopted = None
    if cfg is None:
        from tunedeck.core.demo import sample_dataset  # NumPy: a tenth of a second, only for the demo

        cfg = C.preset("demo", str(sample_dataset()))
    if data:
        cfg.data.path = str(Path(data).resolve())
    if model:
        cfg.model.path = model
    data_path = Path(cfg.data.path)
    if not data_path.is_absolute():
        data_path = (config_path.parent / data_path).resolve()
    return AppState(workspace, config_path, cfg, data_path, cfg.model.path, active_run=live, adopted_run=adopted)


def load_tokenizer(model: str, progress: Callable[[str], None]) -> Any:
    """The tokenizer of `model` ("demo", a local directory, or a Hugging Face id), without the weights."""
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    from tunedeck.core.model import check_template

    if model == C.DEMO_MODEL:
        from tunedeck.core import demo

        # the tokenizer only: the random-weight build has the same one, in seconds (no 2-minute pre-training)
        progress("preparing the demo tokenizer (built once into the user cache)")
        path = demo.ensure(progress=progress, random=True)
    else:
        from tunedeck.core.model import resolve_path

        resolved = resolve_path(model)
        path = Path(resolved)
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            progress(f"fetching the tokenizer of {resolved}")
            path = Path(snapshot_download(resolved, allow_patterns=["*.json", "tokenizer*", "*.model", "*.tiktoken"]))
    progress("loading the tokenizer")
    tokenizer = mlx_load_tokenizer(path)
    progress("checking the chat template")
    check_template(tokenizer)  # a template that loops or explodes is refused here, naming its file
    return tokenizer


class TunedeckApp(App[int]):
    TITLE = "tunedeck"
    MODES = {mode: (lambda mode=mode: screen_class(mode)()) for mode in SCREEN_CLASSES}
    CSS_PATH = _stylesheets()
    COMMANDS = App.COMMANDS | {TunedeckCommands}
    DEFAULT_MODE = "data"
    BINDINGS = [
        Binding("1", "switch_mode('data')", "Data", id="screen.data", tooltip="Browse the dataset", show=False),
        Binding("2", "switch_mode('config')", "Config", id="screen.config", tooltip="Edit the training config", show=False),
        Binding("3", "switch_mode('train')", "Train", id="screen.train", tooltip="Watch or start training", show=False),
        Binding("4", "switch_mode('chat')", "Chat", id="screen.chat", tooltip="Talk to the adapter", show=False),
        Binding("5", "switch_mode('runs')", "Runs", id="screen.runs", tooltip="All runs in this workspace", show=False),
        Binding("question_mark", "help", "Keys", key_display="?", id="app.help", tooltip="List every key of every screen"),
        Binding("f1", "help", "Keys", show=False, id="app.help_f1", tooltip="List every key of every screen"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", tooltip="Quit (a detached run keeps training)", priority=True),
    ]

    model_status: var[ModelStatus] = var(ModelStatus())
    """The current model's tokenizer: loaded on demand by `request_tokenizer`; screens watch this."""

    def __init__(self, state: AppState) -> None:
        if find_running(state.runs_root) is not None:
            self.DEFAULT_MODE = "train"  # re-opened over a live run: start on it (read by App.__init__)
        super().__init__()
        self.state = state
        self.state_changed_signal: Signal[frozenset[str]] = Signal(self, "state-changed")
        """Published by `update_state` with the names of the AppState fields it set."""
        for theme in THEMES:
            self.register_theme(theme)
        settings, self.settings_problem = read_settings()
        saved = settings.get("theme")
        self.theme = saved if isinstance(saved, str) and saved in self.available_themes else DEFAULT_THEME

    def on_mount(self) -> None:
        if self.settings_problem:
            self.notify(display(f"{self.settings_problem}; using the default settings"), severity="warning",
                        markup=False, timeout=30)
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.mode_change_signal.subscribe(self, lambda _mode: self._refresh_header())
        self._refresh_header()
        self._last_input = time.monotonic()
        self._warm_timer = self.set_interval(WARM_AFTER_IDLE / 2, self._warm_up)
        if heap.deferred():  # run_app left full garbage collections to the app: one in each pause of the user
            collector = heap.IdleCollector()
            self.set_interval(heap.IDLE_S / 2, lambda: collector.tick(self._last_input))

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.Key, events.MouseDown)):
            self._last_input = time.monotonic()
        await super().on_event(event)

    def _warm_up(self) -> None:
        """Once the user pauses, build the Config screen: its form is ~240 widgets (seconds on a slow, busy CPU),
        so its first visit becomes a switch to a built screen (Textual builds a mode's screen in `_init_mode`,
        which `switch_mode` calls on a first visit; the screen is not shown until then). In the next pause,
        import the other screens' modules."""
        if (time.monotonic() - self._last_input < WARM_AFTER_IDLE or len(self.screen_stack) != 1
                or any(w.state == WorkerState.RUNNING for w in self.workers)):
            return
        if "config" not in self._screen_stacks:
            self._init_mode("config")
            return
        self._warm_timer.stop()
        for mode in SCREEN_CLASSES:
            screen_class(mode)

    def _remember_theme(self, theme: Any) -> None:
        try:
            save_settings(theme=theme.name)
        except OSError as e:
            self.notify(display(f"Could not remember the theme: {e}"), severity="warning", markup=False)

    def update_state(self, **fields: Any) -> None:
        """Set AppState `fields` (the only writer of `state`), then follow them here (the header; a new model's
        tokenizer) and publish their names on `state_changed_signal` for the screens and widgets."""
        for name, value in fields.items():
            setattr(self.state, name, value)  # AppState has slots: a name it lacks is an AttributeError
        names = frozenset(fields)
        if "model" in names:
            self.forget_tokenizer()
        if names & HEADER_FIELDS:
            self._refresh_header()
        self.state_changed_signal.publish(names)

    def _refresh_header(self) -> None:
        """Name the screen, dataset, model and active run in the header."""
        s = self.state
        run = s.active_run.name if s.active_run else "none"
        if s.adopted_run is not None and s.adopted_run == s.active_run:
            run += " (its config and data)"
        self.title = f"tunedeck · {self.current_mode.title()}"
        self.sub_title = display(f"{s.data_path.name} · model {s.model} · run {run}")

    def on_config_applied(self, message: ConfigApplied) -> None:
        """A valid config in the form becomes the one every screen uses."""
        cfg = message.config
        self.update_state(config=cfg, adopted_run=None, data_path=self.state.resolve_data_path(cfg.data.path),
                          model=cfg.model.path)

    def action_help(self) -> None:
        from .screens.compare import CompareScreen  # imported with the Runs screen's module (screen_class)

        if isinstance(self.screen, HelpScreen):
            return
        sections: list[tuple[str, list[Binding]]] = [
            ("Everywhere", [*Binding.make_bindings(self.BINDINGS),
                            Binding(self.COMMAND_PALETTE_BINDING, "command_palette", "Commands",
                                    tooltip="Search screens, actions and themes")]),
        ]
        for n, mode in enumerate(SCREEN_CLASSES, 1):
            bindings = list(Binding.make_bindings(screen_class(mode).BINDINGS))
            sections.append((f"{mode.title()} screen ({n})", bindings))
        sections.append(("Compare runs (c on Runs)", list(Binding.make_bindings(CompareScreen.BINDINGS))))
        self.push_screen(HelpScreen(sections, self.get_key_display))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's commands, with one "Keys" (tunedeck's keys screen, not a second, different one) and a
        screenshot that is saved into the workspace."""
        for command in super().get_system_commands(screen):
            if command.title == "Keys":
                yield SystemCommand("Keys", "Every key of every screen (? or f1)", self.action_help)
            elif command.title == "Screenshot":
                yield SystemCommand("Screenshot", f"Save an SVG of the screen into the workspace's {SCREENSHOTS}/",
                                    lambda: self.set_timer(0.1, self.action_screenshot))
            else:
                yield command

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        """Save an SVG of the screen under workspace/screenshots/ (atomically) and say where."""
        folder = Path(path) if path else self.state.workspace / SCREENSHOTS
        name = filename or f"tunedeck-{self.current_mode}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        target = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, self.export_screenshot())
        except OSError as e:
            self.notify(display(f"Screenshot not saved to {target}: {e.strerror or e}"), severity="error",
                        markup=False)
            return
        self.notify(display(f"Screenshot saved to {target}"), markup=False, timeout=10)

    def unsaved(self) -> list[str]:
        """What is unsaved, one phrase a screen: which file, and how many edits where they are counted."""
        out = []
        for mode in sorted(self.state.dirty):
            screen = self.get_screen_stack(mode)[0] if self.get_screen_stack(mode) else None
            if isinstance(screen, DataScreen) and screen.loaded_path:
                n = len(screen.edits)
                out.append(f"{n} label edit{'s' if n != 1 else ''} to {screen.loaded_path.name}")
            elif mode == "config":
                out.append(f"the config form's changes to {self.state.config_path.name}")
            else:
                out.append(mode)
        return out

    async def action_quit(self) -> None:
        """Quit with status 0; with unsaved edits, ask first. Never touches a detached run."""
        if not self.state.dirty:
            self.exit(0)
        elif not isinstance(self.screen, QuitScreen):
            self.push_screen(QuitScreen(self.unsaved()), self._quit_choice)

    async def _quit_choice(self, choice: str | None) -> None:
        if choice == "save":
            for mode in sorted(self.state.dirty):
                save = getattr(self.get_screen_stack(mode)[0], "save_changes", None)  # Data's and Config's
                if save is not None and not await save():
                    return
        if choice in ("save", "discard"):
            self.exit(0)

    def request_tokenizer(self) -> None:
        """Start loading the current model's tokenizer unless it is loaded or loading."""
        status = self.model_status
        if status.model == self.state.model and status.state in ("loading", "ready"):
            return
        self.model_status = ModelStatus("loading", "starting", self.state.model)
        self._load_tokenizer(self.state.model)

    def forget_tokenizer(self) -> None:
        """Drop the tokenizer if the model changed (the next request loads the new one)."""
        if self.model_status.model != self.state.model:
            self.workers.cancel_group(self, "tokenizer")
            self.model_status = ModelStatus()

    @work(thread=True, exclusive=True, group="tokenizer")
    def _load_tokenizer(self, model: str) -> None:
        from tunedeck.core.model import ModelError  # MLX: imported by the first tokenizer, not at start-up

        def progress(message: str) -> None:
            self.call_from_thread(self._set_status, ModelStatus("loading", message, model))

        try:
            tokenizer = load_tokenizer(model, progress)
        except ModelError as e:  # the message names the file and what is wrong
            self.call_from_thread(self._set_status, ModelStatus("failed", str(e), model))
        except Exception as e:  # a broken model dir, no network for a hub id, ...: shown, never fatal
            self.call_from_thread(self._set_status, ModelStatus("failed", f"{type(e).__name__}: {e}", model))
        else:
            self.call_from_thread(self._set_status, ModelStatus("ready", "", model, tokenizer))

    def _set_status(self, status: ModelStatus) -> None:
        if status.model == self.state.model:
            self.model_status = status


def run_app(workspace: Path, data: str | None = None, config: str | None = None, model: str | None = None) -> NoReturn:
    """Run the app, then exit the process: status 0 after ctrl+q and 1 after a crash.

    Finalising the interpreter while native threads (the tokenizers' pool, MLX) are still winding down aborts
    the process ("terminate called without an active exception", exit 134) when the user quits right after
    opening the token view. By now `asyncio.run` inside `App.run` has joined the worker threads (its default
    executor is shut down, waiting for running work), the terminal is restored, and every file the app
    writes was written atomically, so nothing is left for finalisation to do."""
    heap.defer_full_collections()
    app = TunedeckApp(initial_state(workspace, data, config, model))
    app.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(app.return_code or 0)
