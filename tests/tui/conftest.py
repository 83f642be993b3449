"""Shared helpers for the app's tests: workspaces, starting the app, waiting on it, reading its screen."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from textual.worker import WorkerCancelled

from tunedeck.core import config as C
from tunedeck.core.demo import sample_dataset
from tunedeck.tui.app import TunedeckApp, initial_state
from tunedeck.tui.state import CONFIG_NAME


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own settings file, so a theme chosen in one never leaks into another."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def make_workspace(root: Path, n: int = 40, lines: list[str] | None = None, **data: object) -> Path:
    """A workspace with `n` sample examples (or `lines`) in data.jsonl and a demo tunedeck.toml."""
    root.mkdir(parents=True, exist_ok=True)
    if lines is None:
        lines = sample_dataset().read_text(encoding="utf-8").splitlines()[:n]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = C.preset("demo", "data.jsonl")
    for key, value in data.items():
        setattr(cfg.data, key, value)
    C.save(cfg, root / CONFIG_NAME)
    return root


def make_train_workspace(root: Path, **train: object) -> Path:
    """A workspace: 64 sample examples and a tiny demo config in tunedeck.toml (train.* overridable)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = sample_dataset().read_text(encoding="utf-8").splitlines()[:64]
    data = root / "data.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = C.preset("demo", str(data))
    cfg.train.iters, cfg.train.save_every, cfg.train.eval_every = 6, 3, 3
    cfg.train.eval_batches, cfg.train.batch_size, cfg.train.warmup_steps = 1, 4, 0
    cfg.data.max_seq_len = 256
    for key, value in train.items():
        setattr(cfg.train, key, value)
    C.save(cfg, root / CONFIG_NAME)
    return root


def make_app(workspace: Path, budget_gb: float | None = 24.0) -> TunedeckApp:
    app = TunedeckApp(initial_state(workspace, None, None, None))
    app.state.memory_budget_gb = budget_gb
    return app


def open_app(workspace: Path) -> TunedeckApp:
    return TunedeckApp(initial_state(workspace, None, None, None))


async def settle(app: TunedeckApp, pilot) -> None:
    """Let workers finish and the screen refresh (twice: a worker may start another)."""
    for _ in range(2):
        try:
            await app.workers.wait_for_complete()
        except WorkerCancelled:
            pass
        await pilot.pause()


async def wait_for(pilot, cond: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    """Let the app run until `cond()` holds (the deadline is generous: a loaded CI machine is slow)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


def screen_text(app: TunedeckApp) -> str:
    """The screen as plain text, as a terminal would show it."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())
