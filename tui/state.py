"""What the screens share: the workspace, its config, the dataset and model in use, the active run.

`TunedeckApp.update_state` is its one writer: it publishes the names of the fields it set on the app's
`state_changed_signal`, which the screens and widgets that show them subscribe to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunedeck.core.config import Config, beside
from tunedeck.core.data import Dataset, Example

CONFIG_NAME = "tunedeck.toml"


@dataclass(slots=True)
class AppState:
    """The state the screens share (read it as `screen.state`, change it through `tapp.update_state`)."""

    workspace: Path
    config_path: Path  # the TOML file the Config screen edits (workspace/tunedeck.toml by default)
    config: Config  # the last valid config (saved or not)
    data_path: Path  # dataset the Data screen browses (= config.data.path resolved)
    model: str  # base model: directory, HF id or "demo"
    active_run: Path | None = None  # run the Train screen is attached to
    adopted_run: Path | None = None  # the live run whose frozen config (data, model) the app opened with
    current_example: Example | None = None  # example selected in the Data screen (chat's ctrl+e)
    dirty: set[str] = field(default_factory=set)  # screens with unsaved edits ("data", "config")
    dataset: Dataset | None = None  # the dataset as last loaded from disk by the Data screen
    token_lengths: tuple[list[int], list[int]] | None = None  # per example of `dataset`: (sequence, completion) tokens
    memory_budget_gb: float | None = None  # memory training may use (None: what this machine allows)

    @property
    def runs_root(self) -> Path:
        return self.workspace / "runs"

    def resolve_data_path(self, path: str) -> Path:
        """A config's data.path as a file path (relative paths are relative to the config file)."""
        return beside(path, self.config_path.parent).resolve()


@dataclass(frozen=True)
class ModelStatus:
    """Where loading the current model's tokenizer stands (the app's `model_status`)."""

    state: str = "idle"  # idle | loading | ready | failed
    message: str = ""  # progress while loading, the reason when failed
    model: str = ""
    tokenizer: Any = None
