"""The tunedeck Textual app: five screens (Data, Config, Train, Chat, Runs) on the keys 1-5."""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from tunedeck.core import config as C
from tunedeck.core.demo import sample_dataset

from .screens.chat import ChatScreen
from .screens.config import ConfigScreen
from .screens.data import DataScreen
from .screens.runs import RunsScreen
from .screens.train import TrainScreen
from .state import CONFIG_NAME, AppState


def initial_state(workspace: Path, data: str | None, config: str | None, model: str | None) -> AppState:
    """Resolve what to open: explicit options, else workspace/tunedeck.toml, else the bundled demo."""
    workspace = workspace.resolve()
    config_path = Path(config).resolve() if config else workspace / CONFIG_NAME
    if config_path.is_file():
        try:
            cfg, _ = C.load(config_path)
        except C.ConfigError:
            cfg = C.preset("demo", str(sample_dataset()))  # the Config screen shows the file's errors
    else:
        cfg = C.preset("demo", str(sample_dataset()))
    if data:
        cfg.data.path = str(Path(data).resolve())
    if model:
        cfg.model.path = model
    data_path = Path(cfg.data.path)
    if not data_path.is_absolute():
        data_path = (config_path.parent / data_path).resolve()
    return AppState(workspace, config_path, cfg, data_path, cfg.model.path)


class TunedeckApp(App[int]):
    TITLE = "tunedeck"
    MODES = {
        "data": DataScreen,
        "config": ConfigScreen,
        "train": TrainScreen,
        "chat": ChatScreen,
        "runs": RunsScreen,
    }
    DEFAULT_MODE = "data"
    BINDINGS = [
        Binding("1", "switch_mode('data')", "Data", id="screen.data", tooltip="Browse the dataset"),
        Binding("2", "switch_mode('config')", "Config", id="screen.config", tooltip="Edit the training config"),
        Binding("3", "switch_mode('train')", "Train", id="screen.train", tooltip="Watch or start training"),
        Binding("4", "switch_mode('chat')", "Chat", id="screen.chat", tooltip="Talk to the adapter"),
        Binding("5", "switch_mode('runs')", "Runs", id="screen.runs", tooltip="All runs in this workspace"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", tooltip="Quit (a detached run keeps training)", priority=True),
    ]

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state

    async def action_quit(self) -> None:
        self.exit(0)


def run_app(workspace: Path, data: str | None = None, config: str | None = None, model: str | None = None) -> int:
    app = TunedeckApp(initial_state(workspace, data, config, model))
    result = app.run()
    return int(result or 0)
