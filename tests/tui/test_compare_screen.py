"""The compare view: mark runs on the Runs screen (space), press c, see them overlaid; escape goes back."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable

from tests.tui.conftest import make_train_workspace as make_workspace
from tests.tui.conftest import open_app, screen_text, text_of, wait_for
from tests.tui.test_runs_screen import fake_run, history, open_runs, select
from tunedeck.core import config as C
from tunedeck.tui.screens.compare import CompareScreen
from tunedeck.tui.screens.runs import MARK, RunsScreen
from tunedeck.tui.state import CONFIG_NAME


def kto_history(steps: int, scale: float) -> list[dict]:
    """A finished KTO run's events, with margins and trained tokens."""
    out = history("kto", steps, "done", steps)
    for e in out:
        if e["type"] == "step":
            e.update(margin=scale * e["step"], tokens=100)
    return out


def with_lr(run_dir: Path, lr: float) -> None:
    cfg, _ = C.load(run_dir / "config.toml")
    cfg.train.learning_rate = lr
    C.save(cfg, run_dir / "config.toml")


async def mark_and_compare(app, pilot, runs: list[Path]) -> CompareScreen:
    screen = await open_runs(app, pilot)
    for run in runs:
        select(screen, run)
        await pilot.press("space")
    table = screen.query_one(DataTable)
    labels = {str(k.value): str(row.label) for k, row in table.rows.items()}
    assert [labels[str(r)] for r in runs] == [MARK] * len(runs)
    await pilot.press("c")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None, 120,
                   "the compare view")
    await pilot.pause()
    return app.screen


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_mark_two_runs_compare_and_go_back(tmp_path: Path, size: tuple[int, int]) -> None:
    ws = make_workspace(tmp_path / "ws")
    a = fake_run(ws, "20260101-000001-kto", kto_history(6, 0.1))
    b = fake_run(ws, "20260101-000002-kto", kto_history(4, 0.3))
    with_lr(a, 1e-4)
    with_lr(b, 3e-4)
    app = open_app(ws)
    async with app.run_test(size=size) as pilot:
        compare = await mark_and_compare(app, pilot, [a, b])
        legend = text_of(compare, "#compare-legend")
        assert a.name in legend and b.name in legend
        diff = compare.query_one("#compare-diff", DataTable)
        assert [str(c) for c in diff.get_row("train.learning_rate")] == ["train.learning_rate", "0.0001", "0.0003"]
        assert compare.query_one("#loss-plot").shown[a.name][0] == [1, 2, 3, 4, 5, 6]
        assert compare.query_one("#margin-plot").shown[b.name][1] == pytest.approx([0.3, 0.6, 0.9, 1.2])
        assert "reward accuracy: none recorded" in text_of(compare, "#reward_accuracy-title")
        await pilot.press("x")  # by trained tokens: 100 a step, so 100..600
        assert compare.query_one("#loss-plot").shown[a.name][0] == [100, 200, 300, 400, 500, 600]
        app.save_screenshot(str(tmp_path / f"compare-{size[0]}x{size[1]}.svg"))
        assert "train.learning_rate" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_fewer_than_two_marked_says_so(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    a = fake_run(ws, "20260101-000001-kto", kto_history(3, 0.1))
    app = open_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_runs(app, pilot)
        select(screen, a)
        await pilot.press("space", "space", "c")  # marked, unmarked: none
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("Mark 2 to 8 runs" in str(n.message) for n in app._notifications)


async def test_hostile_run_names_show_literally(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    a = fake_run(ws, "[bold]odd", kto_history(3, 0.1))
    b = fake_run(ws, "tab\there \x1b[31mred", kto_history(3, 0.2))
    (b / "config.toml").write_text((ws / CONFIG_NAME).read_text())
    app = open_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        compare = await mark_and_compare(app, pilot, [a, b])
        legend = text_of(compare, "#compare-legend")
        assert "[bold]odd" in legend and "tab\\there \\x1b[31mred" in legend
        labels = [str(c.label) for c in compare.query_one("#compare-diff", DataTable).columns.values()]
        assert labels[1:] == ["[bold]odd", "tab\\there \\x1b[31mred"]
        assert "\x1b" not in screen_text(app)
