"""User settings: a TOML file at `$XDG_CONFIG_HOME/tunedeck/settings.toml`.

Read leniently (a missing or broken file means no settings: the defaults) and written atomically; a
broken file is reported (`read_settings`) and never overwritten. Keys: `theme`,
`labels.keep_backups` (how many backups of a labelled dataset to keep; default 5).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomli_w

from .config import ConfigError, ConfigProblem, parse_toml, read_text
from .fsutil import atomic_write_text

KEEP_BACKUPS = 5


def settings_path() -> Path:
    """`$XDG_CONFIG_HOME/tunedeck/settings.toml` (default `~/.config/tunedeck/settings.toml`)."""
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(root) / "tunedeck" / "settings.toml"


class SettingsError(OSError):
    """The settings file exists but cannot be read, so it is not overwritten."""


def read_settings() -> tuple[dict[str, Any], str | None]:
    """The saved settings, and why the file could not be used ("PATH: reason"; the settings are then {}).

    A missing file is no problem. The file is never waited on (a FIFO is refused) and any content,
    however malformed or deeply nested, gives a reason instead of an exception.
    """
    path = settings_path()
    if not path.exists():
        return {}, None
    try:
        raw, problems = parse_toml(read_text(path))
    except ConfigError as e:
        return {}, _reason(path, e.problems[0])
    return (raw, None) if raw is not None else ({}, _reason(path, problems[0]))


def _reason(path: Path, problem: ConfigProblem) -> str:
    where = f" (line {problem.line}, column {problem.column})" if problem.line is not None else ""
    return f"{path}{where}: {problem.message}"


def load_settings() -> dict[str, Any]:
    """The saved settings; {} when the file is missing or cannot be used (see read_settings)."""
    return read_settings()[0]


def save_settings(**values: Any) -> None:
    """Merge `values` into the saved settings and write the file atomically; SettingsError (leaving the
    file as it is) when the existing file cannot be read back."""
    current, problem = read_settings()
    if problem:
        raise SettingsError(f"{problem}; left as it is (fix or remove it)")
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomli_w.dumps({**current, **values}))


def label_backups_to_keep() -> int:
    """`labels.keep_backups` (default KEEP_BACKUPS); ValueError naming the file and key if it is not an int >= 1."""
    labels = load_settings().get("labels", {})
    if not isinstance(labels, dict):
        raise ValueError(f"{settings_path()}: labels: expected a table, got {labels!r}")
    value = labels.get("keep_backups", KEEP_BACKUPS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{settings_path()}: labels.keep_backups: expected an integer >= 1, got {value!r}")
    return value
