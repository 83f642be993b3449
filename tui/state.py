"""What the screens share: the workspace, its config, the dataset and model in use, the active run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunedeck.core.config import Config
from tunedeck.core.data import Example

CONFIG_NAME = "tunedeck.toml"


@dataclass
class AppState:
    workspace: Path
    config_path: Path  # the TOML file the Config screen edits (workspace/tunedeck.toml by default)
    config: Config  # the last valid config (saved or not)
    data_path: Path  # dataset the Data screen browses (= config.data.path resolved)
    model: str  # base model: directory, HF id or "demo"
    active_run: Path | None = None  # run the Train screen is attached to
    current_example: Example | None = None  # example selected in the Data screen (chat's ctrl+e)
    dirty: set[str] = field(default_factory=set)  # screens with unsaved edits ("data", "config")

    @property
    def runs_root(self) -> Path:
        return self.workspace / "runs"
