"""Shared fixtures: an isolated user cache (the demo model is built once per session into it)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Isolate the user cache and config for the whole session, subprocesses included.
_HOME = Path(tempfile.mkdtemp(prefix="tunedeck-test-home-"))
os.environ["XDG_CACHE_HOME"] = str(_HOME / "cache")
os.environ["XDG_CONFIG_HOME"] = str(_HOME / "config")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

BIN = Path(sys.executable).parent / "tunedeck"


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The tiny demo model, built once for the session into the isolated cache."""
    from tunedeck.core import demo

    return demo.ensure()


@pytest.fixture(scope="session")
def sample_data() -> Path:
    from tunedeck.core import demo

    return demo.sample_dataset()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `tunedeck` console script in a real subprocess."""
    return subprocess.run(
        [str(BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, input=input,
    )
