"""Editable installs: map the `tunedeck` package onto the repo root (core/, tui/, themes/).

Wheels get `tunedeck/core` etc. through force-include; hatchling refuses prefix rewrites in
editable mode, so there we ship a generated `tunedeck/__init__.py` whose `__path__` is the repo.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EditableTunedeckHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            return
        root = os.path.abspath(self.root)
        init = os.path.join(tempfile.mkdtemp(prefix="tunedeck-editable-"), "__init__.py")
        with open(os.path.join(root, "tunedeck_init.py"), encoding="utf-8") as f:
            body = f.read()
        with open(init, "w", encoding="utf-8") as f:
            f.write(body + f"\n__path__ = [{root!r}]\n")
        build_data["force_include_editable"] = {init: "tunedeck/__init__.py"}
