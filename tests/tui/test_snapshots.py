"""Snapshots of every screen at 80×24 and 120×40, in the dark theme and with NO_COLOR
(`pytest --snapshot-update` rewrites them). Nothing time-, machine- or model-specific shows: the forecast is
fixed, the Train screen follows a finished fake run (no clock ticks), dates are in UTC."""

from __future__ import annotations

import fcntl
import math
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.tui.conftest import make_app, make_workspace, settle, wait_for
from tests.tui.test_runs_screen import fake_run
from tunedeck.core import config as C
from tunedeck.core import forecast
from tunedeck.core.forecast import Forecast

FIXED = Forecast(3.2, {"weights": 1.5, "adapters": 0.1, "optimizer": 0.2, "activations": 1.4}, 24.0, "fits", [])
RUN = "20260101-000001-kto"
SECOND_RUN = "20260101-000002-kto"
SCREENS = {"1": "data", "2": "config", "3": "train", "4": "chat", "5": "runs"}
SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


def kto_events(steps: int = 40, total: int = 60) -> list[dict]:
    """A KTO run stopped at `steps`: noisy loss, rewards within ±3, KL 10× larger, evals every 10 steps."""
    t0 = 1_800_000_000.0
    out: list[dict] = [{"type": "start", "step": 0, "time": t0, "method": "kto", "total_steps": total}]
    for s in range(1, steps + 1):
        wiggle = math.sin(s * 1.7)
        out.append({"type": "step", "step": s, "time": t0 + s, "loss": 0.6 * math.exp(-s / 30) + 0.2 + 0.15 * wiggle,
                    "rewards_chosen": s / 20 + 0.2 * wiggle, "rewards_rejected": -s / 25 - 0.2 * wiggle,
                    "margin": s / 11, "kl": 30 + s / 2 + 2 * wiggle, "lr": 1e-5, "tokens_per_sec": 33.0,
                    "seq_tokens_per_sec": 157.0, "rss_gb": 1.3, "mlx_active_gb": 0.9, "peak_memory_gb": 2.1,
                    "sys_used_gb": 12.0, "sys_total_gb": 32.0})
        if s % 10 == 0:
            out.append({"type": "eval", "step": s, "time": t0 + s, "val_loss": 0.5 - s / 400, "val_margin": s / 15,
                        "val_reward_accuracy": 0.5 + s / 100})
    out.append({"type": "warning", "step": steps, "time": t0 + steps,
                "message": "kto weights give (λD·nD)/(λU·nU) = 3.00, outside [1, 1.33]: the Config screen's w "
                           "suggests weights for this split"})
    out.append({"type": "stopped", "step": steps, "time": t0 + steps + 1, "signal": "SIGTERM", "checkpoint": None})
    return out


@pytest.fixture
def fixed_app(monkeypatch: pytest.MonkeyPatch):
    """The app on a fixed 30-example workspace at a fixed path (the Runs screen names it), with one stopped KTO
    run, a fixed forecast and UTC dates."""
    monkeypatch.setattr(forecast, "forecast", lambda *args, **kwargs: FIXED)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    ws = Path(tempfile.gettempdir()) / "tunedeck-snapshots" / "ws"
    # one fixed path for every test worker (pytest-xdist): each snapshot test holds it alone
    lock = open(Path(tempfile.gettempdir()) / "tunedeck-snapshots.lock", "w")  # noqa: SIM115 (held until teardown)
    fcntl.flock(lock, fcntl.LOCK_EX)
    shutil.rmtree(ws.parent, ignore_errors=True)
    make_workspace(ws, n=30)
    fake_run(ws, RUN, kto_events())

    def make(no_color: bool = False):
        if no_color:
            monkeypatch.setenv("NO_COLOR", "1")
        else:
            monkeypatch.delenv("NO_COLOR", raising=False)
        return make_app(ws, budget_gb=24.0)

    yield make
    shutil.rmtree(ws.parent, ignore_errors=True)
    monkeypatch.delenv("TZ")
    time.tzset()
    lock.close()  # releases the lock


def opener(key: str):
    """run_before for snap_compare: load, switch to the screen on `key` (Train: attached to the fake run)."""

    async def open_screen(pilot) -> None:
        app = pilot.app
        await settle(app, pilot)
        await pilot.press(key)
        await settle(app, pilot)
        for widget in app.screen.query("Input"):
            widget.cursor_blink = False
        if key == "3":  # its follower worker runs until detached: wait for what it read, not for it
            app.screen.attach(app.state.runs_root / RUN)
            await wait_for(pilot, lambda: app.screen.status == "stopped", 120, "the fake run's stopped status")
            await pilot.pause(0.6)  # the 4 Hz redraw
        else:
            await settle(app, pilot)

    return open_screen


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("key", list(SCREENS), ids=list(SCREENS.values()))
def test_screen(snap_compare, fixed_app, key: str, size: str) -> None:
    assert snap_compare(fixed_app(), terminal_size=SIZES[size], run_before=opener(key))


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("key", list(SCREENS), ids=list(SCREENS.values()))
def test_screen_no_color(snap_compare, fixed_app, key: str, size: str) -> None:
    assert snap_compare(fixed_app(no_color=True), terminal_size=SIZES[size], run_before=opener(key))


def test_data_screen_after_a_label_toggle(snap_compare, fixed_app) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), press=["j", "space"], run_before=opener("1"))


def test_data_screen_narrow(snap_compare, fixed_app) -> None:
    assert snap_compare(fixed_app(), terminal_size=(60, 20), run_before=opener("1"))


def test_config_screen_with_an_error(snap_compare, fixed_app) -> None:
    async def bad_batch_size(pilot) -> None:
        await opener("2")(pilot)
        editor = pilot.app.screen.field("train.batch_size").editor
        editor.cursor_blink = False
        editor.focus()
        editor.value = ""
        await pilot.press("1")
        await settle(pilot.app, pilot)

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=bad_batch_size)


def compare_two_runs(fixed_app, no_color: bool = False):
    """The fixed app with a second, shorter KTO run of another learning rate, its loss higher, its margins and
    reward accuracy lower than the first run's (the fixture's workspace)."""
    app = fixed_app(no_color)
    events = kto_events(steps=30, total=60)
    for e in events:
        if e["type"] == "step":
            e.update(loss=e["loss"] + 0.3, margin=e["margin"] / 2)
        elif e["type"] == "eval":
            e.update(val_reward_accuracy=e["val_reward_accuracy"] - 0.1)
    second = fake_run(app.state.runs_root.parent, SECOND_RUN, events)
    cfg, _ = C.load(second / "config.toml")
    cfg.train.learning_rate = 3e-4
    C.save(cfg, second / "config.toml")
    return app


async def open_compare(pilot) -> None:
    """run_before: mark both runs on the Runs screen (space), compare them (c)."""
    from textual.widgets import DataTable

    from tunedeck.tui.screens.compare import CompareScreen

    app = pilot.app
    await opener("5")(pilot)
    table = app.screen.query_one(DataTable)
    await wait_for(pilot, lambda: table.row_count == 2, 120, "both runs listed")
    await pilot.press("space", "down", "space", "c")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None, 120,
                   "the compare view")
    await settle(app, pilot)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("no_color", [False, True], ids=["dark", "no_color"])
def test_compare_screen(snap_compare, fixed_app, size: str, no_color: bool) -> None:
    assert snap_compare(compare_two_runs(fixed_app, no_color), terminal_size=SIZES[size], run_before=open_compare)
