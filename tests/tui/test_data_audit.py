"""The Data screen with a finished label audit: each example's rank and score, suspicious first, next suspect."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.binding import Binding
from textual.widgets import DataTable

from tests.tui.conftest import make_app, make_workspace, screen_text, settle, wait_for
from tests.tui.test_data_screen import record
from tunedeck.core.audit import default_dir, load_results
from tunedeck.core.audit_plan import load_dataset, make_plan, source_config, write_plan
from tunedeck.core.audit_score import write_results
from tunedeck.tui.screens.data import DataScreen
from tunedeck.tui.state import CONFIG_NAME

LINES = [record(f"question {n} about ponds", f"answer {n}", n % 3 != 0) for n in range(1, 13)]
TOP_LINE, TOP_SCORE = 7, 2.5  # the made-up top suspect; every other example scores at most 0.12 (below)


def write_audit(workspace: Path) -> Path:
    """A finished 2-fold audit of the workspace's dataset, written by core's own writers, with made-up rewards:
    line TOP_LINE scores TOP_SCORE, line L otherwise ±0.01·L (|score| <= 0.12 for 12 lines)."""
    cfg, config_path = source_config(workspace / CONFIG_NAME)
    ds = load_dataset(cfg)
    plan = make_plan(config_path, cfg, ds, 2, 1)
    audit_dir = default_dir(config_path, plan)
    write_plan(audit_dir, plan, ds, cfg)
    labels = {line: label for line, label, _ in plan.examples}

    def reward(line: int) -> float:
        score = TOP_SCORE if line == TOP_LINE else 0.01 * line
        return -score if labels[line] else score  # score = −r for a desirable example, +r for an undesirable one

    scored = [{"lines": plan.fold_lines(k), "rewards": [reward(ln) for ln in plan.fold_lines(k)],
               "model_dir": str(cfg.model.path)} for k in (1, 2)]
    write_results(audit_dir, plan, scored)
    return audit_dir


def first_row_line(app) -> int:
    table = app.screen.query_one(DataTable)
    return app.state.dataset.examples[int(next(iter(table.rows)).value)].line


async def test_audit_ranks_order_and_next_suspect(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", lines=LINES)
    suspects = load_results(write_audit(ws))
    assert suspects[0].line == TOP_LINE
    app = make_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        await wait_for(pilot, lambda: app.screen.audit is not None, what="the audit to be found")
        assert first_row_line(app) == 1  # file order until asked
        await pilot.press("a")
        await pilot.pause()
        assert first_row_line(app) == TOP_LINE
        assert app.state.current_example.line == TOP_LINE
        text = screen_text(app)
        assert f"#1 · {TOP_SCORE:.2f}" in text and "suspicious first (a)" in text
        assert not app.screen.audit_stale and "earlier" not in text
        await pilot.press("n")
        await pilot.pause()
        assert app.state.current_example.line == suspects[1].line
        await pilot.press("N", "N")  # back to the top suspect, then round to the last
        await pilot.pause()
        assert app.state.current_example.line == suspects[-1].line
        await pilot.press("a")
        await pilot.pause()
        assert first_row_line(app) == 1 and "file order (a)" in screen_text(app)


async def test_without_audit_the_key_says_so(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", lines=LINES))
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("a")
        await pilot.pause()
        assert first_row_line(app) == 1
        assert any("No finished label audit of data.jsonl" in n.message for n in app._notifications)
        assert "suspect" not in screen_text(app)
    listed = {b.id for b in Binding.make_bindings(DataScreen.BINDINGS)}  # the keys screen is generated from these
    assert {"data.audit_order", "data.next_suspect"} <= listed


async def test_an_audit_of_another_version_of_the_file_is_flagged(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", lines=LINES)
    write_audit(ws)
    data = ws / "data.jsonl"
    data.write_text(data.read_text(encoding="utf-8").replace("answer 12", "answer twelve"), encoding="utf-8")
    app = make_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        await wait_for(pilot, lambda: app.screen.audit is not None, what="the audit to be found")
        assert app.screen.audit_stale
        assert any("scored an earlier version of data.jsonl" in n.message for n in app._notifications)
        assert "audit of an earlier data.jsonl" in app.screen.query_one("#status").content.plain  # under the toast


@pytest.mark.slow
async def test_an_audit_started_from_the_data_screen_outlives_the_app(tmp_path: Path, demo_model: Path) -> None:
    """A: the audit of the workspace's config runs detached; its progress shows while it runs; the app quits
    and the audit goes on; re-opened, the app follows it (or finds it finished) and shows its ranks."""
    from tests.reliability.conftest import tiny_config
    from tunedeck.core.audit import audit_status

    config = tiny_config(tmp_path / "ws", "kto", n=24, iters=4, learning_rate=1e-3)
    ws = config.parent
    seen: set[str] = set()

    def progressed() -> bool:
        seen.add(app.screen.audit_progress)
        return any(p.startswith("audit fold 1/2") for p in seen)

    app = make_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("A")
        await wait_for(pilot, progressed, 600, "the audit's first fold in the status line")
        audit_dir = app.screen.audit_live
    assert audit_dir is not None and audit_status(audit_dir).state in ("running", "done")  # quitting left it be
    app = make_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        await wait_for(pilot, lambda: app.screen.audit is not None, 900, "the audit's ranks")
        assert audit_status(audit_dir).state == "done"
        assert len(app.screen.audit) == 24 and "#1 · " in screen_text(app)
