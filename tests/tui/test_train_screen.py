"""The Train screen against real detached trainers (demo model), and against hostile event files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import run_cli
from tests.tui.conftest import make_train_workspace as make_workspace
from tests.tui.conftest import open_app, text_of, wait_for
from tunedeck.core import checkpoint_files, forecast, runs
from tunedeck.core.orchestrate import find_running
from tunedeck.tui.app import TunedeckApp
from tunedeck.tui.screens.train import KL_NOTE, TrainScreen
from tunedeck.tui.state import CONFIG_NAME

pytestmark = pytest.mark.slow


async def switch_to_train(app: TunedeckApp, pilot) -> None:
    await app.switch_mode("train")
    await pilot.pause()


async def test_ctrl_r_trains_in_a_detached_process_and_the_view_follows(tmp_path: Path, demo_model: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    app = open_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await switch_to_train(app, pilot)
        screen = app.screen
        assert isinstance(screen, TrainScreen) and screen.run_dir is None
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.run_dir is not None, 60, "the trainer to start")
        run_dir = screen.run_dir
        assert app.state.active_run == run_dir and run_dir.parent == ws / "runs"
        pid = runs.read_pid(run_dir)
        assert pid is not None  # a separate process holds the run's lock
        await wait_for(pilot, lambda: screen.history.step >= 1, 60, "a step event")
        await wait_for(pilot, lambda: screen.status == "finished", 60, "the run to finish")
        await pilot.pause(0.4)
        assert text_of(screen, "#step") == "step 6/6"
        loss = screen.query_one("#loss-plot").shown
        assert len(loss["train loss"][0]) == 6 and len(loss["val loss"][0]) == 3
        kto = screen.query_one("#kto-plot").shown
        assert set(kto) == {"rewards_chosen", "rewards_rejected", "margin"}
        assert set(screen.query_one("#kl-plot").shown) == {"kl"}
        assert screen.query_one("#kto").display
        rss = screen.query_one("#gauge-rss").value
        assert rss is not None and rss > 0
        assert "finished" in text_of(screen, "#status")
        stats = text_of(screen, "#stats")
        assert "tok/s" in stats and "checkpoint checkpoints/step-000006" in stats
        log = "\n".join(str(line.text) for line in screen.query_one("#log").lines)
        assert "checkpoint @3" in log and "done @6" in log
        assert not screen.query_one("#problem").display


async def test_hostile_event_file_and_a_dead_trainer_are_reported(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forecast, "forecast", lambda cfg, **kw: SimpleNamespace(total_gb=3.0), raising=False)
    ws = make_workspace(tmp_path / "ws")
    run_dir = ws / "runs" / "20260101-000000-kto"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text((ws / CONFIG_NAME).read_text())
    lines = [
        json.dumps({"type": "start", "step": 0, "time": 1.0, "method": "kto", "total_steps": 10}),
        '{"type": "step", "step": 1, "loss": 0.5, "kl": 0.0, "rewards_chosen": 0.0, "time": 2.0, '
        '"rss_gb": 1.5, "sys_used_gb": 4.0, "sys_total_gb": 16.0}',
        "[1, 2, 3]", '"just a string"', "null", "{not json", "\x1b[31m[bold red]garbage[/]",
        "x" * (1 << 20) + "}",  # a 1 MB line
        json.dumps({"type": "martian", "step": 2}),
        json.dumps({"type": "step", "step": "three", "loss": "NaN", "total_steps": -4}),
        json.dumps({"type": "step", "step": 2, "loss": float("nan"), "lr": [1], "rss_gb": True}),
        json.dumps({"type": "warning", "step": 2, "message": "[red]not markup[/red] \x1b]0;pwned\x07"}),
        '{"type": "step", "step": 3, "loss": 0.4',  # half-written last line
    ]
    (run_dir / "events.jsonl").write_text("\n".join(lines))
    (run_dir / "train.log").write_text(
        "loading...\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
        "MemoryError: [b]out of memory[/b]\n")
    (run_dir / "lock").write_text("999999\n")  # a PID, but nobody holds the flock
    app = open_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        app.state.active_run = run_dir
        await switch_to_train(app, pilot)
        screen = app.screen
        await wait_for(pilot, lambda: screen.status == "stale", 10, "the stale verdict")
        await pilot.pause(0.4)
        problem = text_of(screen, "#problem")
        assert screen.query_one("#problem").display
        assert "ended without saying why" in problem
        assert "MemoryError: [b]out of memory[/b]" in problem  # the log tail, literally
        assert text_of(screen, "#step") == "step 2/10"
        assert screen.history.series["train loss"].ys == [0.5]  # NaN and wrong types are not plotted
        assert screen.query_one("#kl-note").display  # KTO with kl == 0
        assert KL_NOTE in text_of(screen, "#kl-note")
        log = "\n".join(str(line.text) for line in screen.query_one("#log").lines)
        assert "martian" in log and "[red]not markup[/red]" in log and "\x1b" not in log
        assert "stale" in text_of(screen, "#status") or "gone" in text_of(screen, "#status")
        assert screen.check_action("resume", ()) is None  # no checkpoint was ever written: nothing to resume
        assert "no checkpoint to resume from" in text_of(screen, "#status")
        assert text_of(screen, "#gauge-rss .gauge-value") == "1.50 GB of 3.00 GB forecast"
        assert text_of(screen, "#gauge-system .gauge-value") == "4.00 GB of 16.0 GB RAM"


async def test_attach_to_a_cli_detached_run_and_stop_it_from_the_ui(tmp_path: Path, demo_model: Path) -> None:
    ws = make_workspace(tmp_path / "ws", method="sft", iters=400, save_every=1000, eval_every=1000)
    r = run_cli("train", str(ws / CONFIG_NAME), "--detach", cwd=ws, timeout=120)
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    if not run_dir.is_absolute():
        run_dir = ws / run_dir
    try:
        assert find_running(ws / "runs") == run_dir.resolve() or find_running(ws / "runs") == run_dir
        app = open_app(ws)
        async with app.run_test(size=(120, 40)) as pilot:
            await switch_to_train(app, pilot)
            screen = app.screen
            assert screen.run_dir is not None and screen.run_dir.name == run_dir.name  # attached on open
            await wait_for(pilot, lambda: screen.history.step >= 2, 60, "step events")
            await pilot.pause(0.4)
            assert text_of(screen, "#step").startswith("step ") and text_of(screen, "#step").endswith("/400")
            await pilot.press("s")
            await pilot.pause(0.2)
            await pilot.press("y")
            await wait_for(pilot, lambda: screen.status == "stopped", 60, "the run to stop")
        events = runs.read_events(run_dir)
        assert events[-2]["type"] == "checkpoint" and events[-1]["type"] == "stopped"
        assert checkpoint_files.latest_checkpoint(run_dir) is not None
        assert not runs.is_locked(run_dir)
    finally:
        if runs.is_locked(run_dir):
            runs.stop_run(run_dir, timeout=60)
