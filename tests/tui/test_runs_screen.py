"""The Runs screen: listing, attaching (history replay), deleting with confirmation, resuming for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable

from tests.conftest import run_cli
from tests.tui.conftest import make_train_workspace as make_workspace
from tests.tui.conftest import open_app, screen_text, text_of, wait_for
from tunedeck.core import checkpoint_files, runlock, runs
from tunedeck.core.rundir import RunDir, checkpoint_step
from tunedeck.tui.screens.runs import RunsScreen
from tunedeck.tui.screens.train import TrainScreen
from tunedeck.tui.state import CONFIG_NAME


def fake_run(ws: Path, name: str, events: list[dict]) -> Path:
    run_dir = ws / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text((ws / CONFIG_NAME).read_text())
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def history(method: str, total: int, end: str | None, steps: int) -> list[dict]:
    out = [{"type": "start", "step": 0, "time": 1_800_000_000.0, "method": method, "total_steps": total}]
    for s in range(1, steps + 1):
        out.append({"type": "step", "step": s, "time": 1_800_000_000.0 + s, "loss": 1.0 / s})
        out.append({"type": "eval", "step": s, "time": 1_800_000_000.0 + s, "val_loss": 2.0 - s / 10})
    if end == "done":
        out.append({"type": "done", "step": steps, "time": 1_800_000_100.0})
    elif end == "error":
        out.append({"type": "error", "step": steps, "time": 1_800_000_100.0, "message": "[b]NaN[/b] loss"})
    return out


def rows(screen: RunsScreen) -> dict[str, list[str]]:
    table = screen.query_one(DataTable)
    return {str(k.value): [str(c) for c in table.get_row(k)] for k in table.rows}


async def open_runs(app, pilot) -> RunsScreen:
    await app.switch_mode("runs")
    screen = app.screen
    assert isinstance(screen, RunsScreen)
    await wait_for(pilot, lambda: screen.query_one(DataTable).row_count > 0, 10, "rows")
    return screen


def select(screen: RunsScreen, run_dir: Path) -> None:
    table = screen.query_one(DataTable)
    table.move_cursor(row=table.get_row_index(str(run_dir)))


async def test_lists_runs_and_enter_attaches_the_train_screen(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    done = fake_run(ws, "20260101-000001-kto", history("kto", 6, "done", 6))
    failed = fake_run(ws, "20260101-000002-sft", history("sft", 50, "error", 3))
    odd = fake_run(ws, "20260101-000003-[bold]odd", history("sft", 9, None, 2))
    app = open_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_runs(app, pilot)
        table = rows(screen)
        assert table[str(done)][1:6] == ["finished", "kto", "6/6", "1.4000", "1.4000"]
        assert table[str(failed)][1:4] == ["failed", "sft", "3/50"]
        assert table[str(odd)][:2] == ["20260101-000003-[bold]odd", "stale"]  # names shown literally
        select(screen, failed)
        await pilot.pause()
        assert "[b]NaN[/b] loss" in text_of(screen, "#runs-detail")
        select(screen, done)
        await pilot.press("enter")
        await pilot.pause()
        train = app.screen
        assert isinstance(train, TrainScreen) and app.state.active_run == done
        await wait_for(pilot, lambda: train.status == "finished", 10, "the replay")
        await pilot.pause(0.4)
        assert text_of(train, "#step") == "step 6/6"
        assert len(train.query_one("#loss-plot").shown["train loss"][0]) == 6


async def test_delete_asks_first_and_refuses_a_training_run(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    done = fake_run(ws, "20260101-000001-kto", history("kto", 6, "done", 6))
    live = fake_run(ws, "20260101-000002-kto", history("kto", 6, None, 1))
    lock = runlock.RunLock(live)
    lock.acquire()  # as a live trainer does
    try:
        app = open_app(ws)
        async with app.run_test(size=(120, 30)) as pilot:
            screen = await open_runs(app, pilot)
            assert rows(screen)[str(live)][1] == "running"
            select(screen, live)
            await pilot.press("d")
            await pilot.pause()
            assert app.screen is screen and live.is_dir()  # refused, no dialog
            select(screen, done)
            await pilot.press("d")
            await pilot.pause()
            await pilot.press("n")
            await pilot.pause()
            assert done.is_dir()
            await pilot.press("d")
            await pilot.pause()
            await pilot.press("y")
            await wait_for(pilot, lambda: not done.exists(), 10, "the delete")
            await wait_for(pilot, lambda: str(done) not in rows(screen), 10, "the refresh")
    finally:
        lock.release()


def stale_at_step_1(run_dir: Path) -> None:
    """A finished 2-step run turned into one whose trainer died after step 1's checkpoint: its later events and
    checkpoints gone."""
    for ckpt in RunDir(run_dir).checkpoint_dirs():
        if checkpoint_step(ckpt) != 1:
            shutil.rmtree(ckpt)
    events = [e for e in runs.read_events(run_dir) if e.get("step", 0) <= 1 and e["type"] not in ("done", "stopped")]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


@pytest.mark.slow
async def test_resume_a_stale_run_for_real(tmp_path: Path, demo_model: Path) -> None:
    ws = make_workspace(tmp_path / "ws", method="sft", iters=2, save_every=1, eval_every=2)
    r = run_cli("train", str(ws / CONFIG_NAME), cwd=ws, timeout=300)
    assert r.returncode == 0, r.stderr
    (stale,) = (ws / "runs").iterdir()
    stale_at_step_1(stale)
    app = open_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_runs(app, pilot)
        assert rows(screen)[str(stale)][1] == "stale"
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen), 60, "the resumed run")
        train = app.screen
        await wait_for(pilot, lambda: train.run_dir == stale, 10, "the attach")
        await wait_for(pilot, lambda: train.status == "finished", 120, "the resumed run to finish")
    events = runs.read_events(stale)
    assert [e["type"] for e in events].count("start") == 2 and events[-1]["type"] == "done"
    assert checkpoint_step(checkpoint_files.latest_checkpoint(stale)) == 2


def footer_text(app) -> str:
    return screen_text(app).rstrip("\n").splitlines()[-1]


async def test_the_footer_fits_80_columns_leaving_out_the_least_useful_keys(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    fake_run(ws, "20260101-000001-kto", history("kto", 10, "done", 10))
    app = open_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_runs(app, pilot)
        await wait_for(pilot, lambda: "? Keys" in footer_text(app), 120, "the footer's keys, uncut")
        footer = footer_text(app)
        assert "space Mark" in footer and "c Compare" in footer and "^p palette" in footer
        assert "f5 Refresh" not in footer  # left out: still in ? and the palette
        await pilot.resize_terminal(120, 40)
        await wait_for(pilot, lambda: "f5 Refresh" in footer_text(app), 120, "every key in a wide footer")
        assert "? Keys" in footer_text(app)


async def test_r_is_offered_only_for_a_run_with_a_checkpoint_to_resume_from(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    failed = fake_run(ws, "20260101-000002-sft", history("sft", 50, "error", 0))  # failed before any checkpoint
    before = (failed / "events.jsonl").read_bytes()
    app = open_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_runs(app, pilot)
        select(screen, failed)
        await pilot.pause()
        assert screen.check_action("resume", ()) is None  # shown dimmed, not run
        await pilot.press("r")
        await pilot.pause(0.5)
        assert isinstance(app.screen, RunsScreen) and not runs.is_locked(failed)
    assert (failed / "events.jsonl").read_bytes() == before and not (failed / "train.log").exists()
