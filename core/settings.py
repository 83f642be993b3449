"""User settings: a flat TOML table at `$XDG_CONFIG_HOME/tunedeck/settings.toml`.

Read leniently (a missing or broken file means no settings) and written atomically.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from .fsutil import atomic_write_text


def settings_path() -> Path:
    """`$XDG_CONFIG_HOME/tunedeck/settings.toml` (default `~/.config/tunedeck/settings.toml`)."""
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(root) / "tunedeck" / "settings.toml"


def load_settings() -> dict[str, Any]:
    """The saved settings; {} when the file is missing, unreadable or not valid TOML."""
    try:
        return tomllib.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def save_settings(**values: Any) -> None:
    """Merge `values` into the saved settings and write the file atomically."""
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomli_w.dumps({**load_settings(), **values}))
