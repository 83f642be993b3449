"""The Train screen tells the truth about a run's state: what `r` can do, a paused trainer, and ctrl+r's
preflight (the same checks as the CLI, before anything is made)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.tui.conftest import make_train_workspace as make_workspace
from tests.tui.conftest import open_app, text_of, wait_for
from tests.tui.test_runs_screen import fake_run, history
from tunedeck.core import config as C
from tunedeck.core import runs
from tunedeck.tui.screens.train import TrainScreen
from tunedeck.tui.state import CONFIG_NAME


async def attach(app, pilot, run_dir: Path) -> TrainScreen:
    await app.switch_mode("train")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, TrainScreen)
    screen.attach(run_dir)
    return screen


async def test_a_run_that_failed_before_its_first_checkpoint_offers_no_resume(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    run_dir = fake_run(ws, "20260101-000002-sft", history("sft", 50, "error", 0))
    app = open_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await attach(app, pilot, run_dir)
        await wait_for(pilot, lambda: screen.status == "failed", what="the failed status")
        await wait_for(pilot, lambda: "no checkpoint to resume from" in text_of(screen, "#status"), what="the text")
        assert "r resumes" not in text_of(screen, "#status")
        assert screen.check_action("resume", ()) is None  # `r` is not offered
        await pilot.press("r")
        await pilot.pause()
        assert not screen.launching and not runs.is_locked(run_dir)


async def test_ctrl_r_runs_the_preflight_and_makes_nothing_when_the_model_cannot_be_had(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = make_workspace(tmp_path / "ws")
    cfg, _ = C.load(ws / CONFIG_NAME)
    cfg.model.path = "nobody/no-such-model"
    C.save(cfg, ws / CONFIG_NAME)
    app = open_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.switch_mode("train")
        await pilot.pause()
        screen = app.screen
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.launching and any(
            "nobody/no-such-model" in n.message for n in app._notifications), what="the preflight's message")
        assert not (ws / "runs").exists() or not list((ws / "runs").iterdir())  # no failed run directory made


@pytest.mark.slow
async def test_a_stopped_trainer_shows_paused_without_a_ticking_clock(tmp_path: Path, demo_model: Path) -> None:
    ws = make_workspace(tmp_path / "ws", method="sft", iters=5000, save_every=100_000, eval_every=100_000)
    r = run_cli("train", str(ws / CONFIG_NAME), "--detach", "--run-dir", str(ws / "runs" / "live"))
    assert r.returncode == 0, r.stderr
    run_dir = ws / "runs" / "live"
    pid = runs.read_pid(run_dir)
    app = open_app(ws)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await attach(app, pilot, run_dir)
            await wait_for(pilot, lambda: screen.status == "running", 240, "the run to train")
            os.kill(pid, signal.SIGSTOP)
            await wait_for(pilot, lambda: screen.status == "paused", 30, "the paused status")
            await wait_for(pilot, lambda: "PAUSED" in text_of(screen, "#status"), 30, "the paused text")
            assert f"kill -CONT {pid}" in text_of(screen, "#status") and "ETA" not in text_of(screen, "#stats")
            assert screen.check_action("stop", ()) is True
            os.kill(pid, signal.SIGCONT)
            await wait_for(pilot, lambda: screen.status == "running", 30, "running again")
    finally:
        os.kill(pid, signal.SIGCONT)
        runs.stop_run(run_dir, timeout=120)
