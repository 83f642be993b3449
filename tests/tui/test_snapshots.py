"""Snapshots of the Data and Config screens at 80×24 (`pytest --snapshot-update` rewrites them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.conftest import make_app, make_workspace, settle
from tunedeck.core import memory
from tunedeck.core.memory import Forecast


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The app on a fixed 30-example dataset, with a fixed forecast (no machine- or model-specific numbers)."""
    fixed = Forecast(3.2, {"weights": 1.5, "adapters": 0.1, "optimizer": 0.2, "activations": 1.4}, 24.0, "fits", [])
    monkeypatch.setattr(memory, "forecast", lambda *args, **kwargs: fixed)
    return make_app(make_workspace(tmp_path / "ws", n=30), budget_gb=24.0)


async def _loaded(pilot) -> None:
    await settle(pilot.app, pilot)


def test_data_screen(snap_compare, app) -> None:
    assert snap_compare(app, terminal_size=(80, 24), press=["j", "space"], run_before=_loaded)


def test_data_screen_narrow(snap_compare, app) -> None:
    assert snap_compare(app, terminal_size=(60, 20), run_before=_loaded)


def test_config_screen(snap_compare, app) -> None:
    async def open_config(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("2")
        await settle(pilot.app, pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=open_config)


def test_config_screen_with_an_error(snap_compare, app) -> None:
    async def bad_batch_size(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("2")
        await settle(pilot.app, pilot)
        editor = pilot.app.screen.field("train.batch_size").editor
        editor.cursor_blink = False
        editor.focus()
        editor.value = ""
        await pilot.press("1")
        await settle(pilot.app, pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=bad_batch_size)


@pytest.fixture
def fixed_app(monkeypatch: pytest.MonkeyPatch):
    """As `app`, in a fixed workspace path (the Runs screen names its directory)."""
    import shutil
    import tempfile

    fixed = Forecast(3.2, {"weights": 1.5, "adapters": 0.1, "optimizer": 0.2, "activations": 1.4}, 24.0, "fits", [])
    monkeypatch.setattr(memory, "forecast", lambda *args, **kwargs: fixed)
    ws = Path(tempfile.gettempdir()) / "tunedeck-snapshots" / "ws"
    shutil.rmtree(ws.parent, ignore_errors=True)
    yield make_app(make_workspace(ws, n=30), budget_gb=24.0)
    shutil.rmtree(ws.parent, ignore_errors=True)


@pytest.mark.parametrize("key", ["3", "4", "5"])
def test_train_chat_runs_screens_before_any_run(snap_compare, fixed_app, key: str) -> None:
    """Train, Chat and Runs in a workspace with no runs yet (nothing time- or machine-dependent shows)."""
    app = fixed_app

    async def open_screen(pilot) -> None:
        await _loaded(pilot)
        await pilot.press(key)
        await settle(pilot.app, pilot)
        for widget in pilot.app.screen.query("Input"):
            widget.cursor_blink = False

    assert snap_compare(app, terminal_size=(80, 24), run_before=open_screen)
