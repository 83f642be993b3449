"""The Train screen's Samples panel, fed an events.jsonl holding `sample` events (core.samples): the selected
prompt's answers by step, cycling between prompts, hostile model output shown literally, at 80x24 and 120x40."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tui.conftest import make_train_workspace, open_app, screen_text, text_of, wait_for
from tunedeck.tui.screens.train import TrainScreen
from tunedeck.tui.state import CONFIG_NAME

HOSTILE = "[red]not markup[/red] \x1b[31mansi\x1b[0m [@click=app.quit]x[/]"


def _sample(step: int, prompt: int, text: str, valid: bool | None) -> str:
    return json.dumps({"type": "sample", "step": step, "time": 2.0 + step, "prompt": prompt,
                       "question": f"question {prompt}", "text": text, "valid": valid, "tokens": 7})


def _run(ws: Path) -> Path:
    """A finished KTO run directory whose events hold the answers of two prompts at steps 2 and 4."""
    run_dir = ws / "runs" / "20260101-000000-kto"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text((ws / CONFIG_NAME).read_text())
    lines = [json.dumps({"type": "start", "step": 0, "time": 1.0, "method": "kto", "total_steps": 4}),
             json.dumps({"type": "step", "step": 2, "time": 2.0, "loss": 0.5, "total_steps": 4}),
             _sample(2, 0, "first answer at two", False), _sample(2, 1, "other prompt at two", None),
             _sample(4, 0, HOSTILE, True), _sample(4, 1, "other prompt at four", None),
             json.dumps({"type": "done", "step": 4, "time": 9.0, "adapters": "adapters", "checkpoint": None,
                         "seconds": 1.0})]
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


async def _open(app, pilot, run_dir: Path) -> TrainScreen:
    app.state.active_run = run_dir
    await app.switch_mode("train")
    screen = app.screen
    assert isinstance(screen, TrainScreen)
    await wait_for(pilot, lambda: screen.status == "finished", 120, "the run's events")
    await pilot.pause(0.3)
    return screen


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_the_selected_prompts_answers_by_step_literally(tmp_path: Path, size: tuple[int, int]) -> None:
    ws = make_train_workspace(tmp_path / "ws")
    run_dir = _run(ws)
    app = open_app(ws)
    async with app.run_test(size=size) as pilot:
        screen = await _open(app, pilot, run_dir)
        panel = screen.query_one("#samples")
        assert panel.display and panel.region.width > 20 and panel.region.height >= 5
        shown = text_of(screen, "#samples-text")
        assert "question 0" in shown and "question 1" not in shown
        assert shown.index("step 2") < shown.index("first answer at two") < shown.index("step 4")
        assert "✗ call" in shown and "✓ call" in shown  # the answers' tool-call validity
        assert "[red]not markup[/red]" in shown and "[@click=app.quit]x[/]" in shown and "\x1b" not in shown
        assert "␛[31mansi" in shown  # the escape as a visible control picture
        assert "prompt 1/2" in str(panel.border_title)
        app.save_screenshot(str(tmp_path / f"samples-{size[0]}x{size[1]}.svg"))
        await pilot.press("right_square_bracket")
        await pilot.pause(0.3)
        shown = text_of(screen, "#samples-text")
        assert "question 1" in shown and "other prompt at two" in shown and "other prompt at four" in shown
        assert "· text" in shown and "call" not in shown  # no call was due: no verdict
        assert "prompt 2/2" in str(panel.border_title)
        await pilot.press("left_square_bracket")
        await pilot.pause(0.3)
        assert "question 0" in text_of(screen, "#samples-text")
        if size == (120, 40):
            assert "not markup" in screen_text(app)


async def test_no_panel_without_sample_events(tmp_path: Path) -> None:
    ws = make_train_workspace(tmp_path / "ws")
    run_dir = _run(ws)
    events = run_dir / "events.jsonl"
    events.write_text("".join(line + "\n" for line in events.read_text().splitlines() if '"sample"' not in line))
    app = open_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _open(app, pilot, run_dir)
        assert not screen.query_one("#samples").display
        assert screen.check_action("cycle_sample", (1,)) is False  # the keys are hidden too
