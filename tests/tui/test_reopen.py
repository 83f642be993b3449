"""Re-opened over a live detached run, the app works on that run's config and dataset, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, small_config
from tests.tui.conftest import open_app, wait_for
from tunedeck.core import runs
from tunedeck.tui.screens.train import TrainScreen

pytestmark = pytest.mark.slow


async def test_reopened_app_adopts_the_live_runs_config_and_data(tmp_path: Path, demo_model: Path) -> None:
    ws = tmp_path / "ws"
    config = small_config(ws / "project", "sft", n=24, iters=5000, save_every=100_000, eval_every=100_000)
    mine = config.rename(ws / "project" / "my.toml")  # not the workspace's tunedeck.toml: the app can't guess it
    r = run_cli("train", "project/my.toml", "--detach", "--run-dir", "runs/live", cwd=ws)
    assert r.returncode == 0, r.stderr
    run_dir = ws / "runs" / "live"
    try:
        app = open_app(ws)
        assert app.state.adopted_run == run_dir.resolve() and app.state.active_run == run_dir.resolve()
        assert app.state.data_path == (mine.parent / "data.jsonl").resolve()  # the run's data, not the demo's
        async with app.run_test(size=(120, 40)) as pilot:  # no settle(): the Train screen follows the live run
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen), what="the Train screen")
            await wait_for(pilot, lambda: "live (its config and data)" in app.sub_title, what="the header")
            assert "data.jsonl" in app.sub_title and "sample" not in app.sub_title
            await app.switch_mode("data")
            await wait_for(pilot, lambda: app.state.dataset is not None and len(app.state.dataset.examples) == 24,
                           what="the run's 24 examples in the Data screen")
    finally:
        runs.stop_run(run_dir, timeout=120)
