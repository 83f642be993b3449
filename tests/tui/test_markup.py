"""Untrusted text (dataset content, file names, errors) is shown literally and never acted upon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tui.conftest import make_app, make_workspace, screen_text, settle, wait_for
from tunedeck.tui.app import TunedeckApp, initial_state
from tunedeck.tui.safe import display

HOSTILE = ["[bold red]x[/]", "[@click=app.quit]q", "[link=file:///etc/passwd]l", "$primary", "\x1b[31mred\x1b[0m"]
SHOWN = ["[bold red]x[/]", "[@click=app.quit]q", "[link=file:///etc/passwd]l", "$primary", "␛[31mred␛[0m"]
NAME = "[b]x[@click=app.quit]q $primary.jsonl"


def hostile_workspace(root: Path) -> Path:
    lines = [json.dumps({"conversations": [{"role": "user", "content": f"{h} asks {i}"},
                                           {"role": "assistant", "content": f"{h} answers"}], "label": i % 2 == 0})
             for i, h in enumerate(HOSTILE)]
    lines.append(json.dumps({"conversations": [{"role": "[red]boss", "content": "[@click=app.quit]"}]}))
    ws = make_workspace(root, lines=lines)
    (ws / "data.jsonl").rename(ws / NAME)
    return ws


def test_display_makes_control_characters_visible() -> None:
    assert display("\x1b[31mred\x1b[0m") == "␛[31mred␛[0m"
    assert display("a\tb\nc\rd\x00\x7f\x9b\u202e") == "a\tb\nc␍d␀␡\\x9b\\u202e"
    assert display("[bold]x[/] $primary") == "[bold]x[/] $primary"


async def test_hostile_dataset_and_file_name_show_literally(tmp_path: Path) -> None:
    ws = hostile_workspace(tmp_path / "ws")
    app = TunedeckApp(initial_state(ws, str(ws / NAME), None, None))
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        assert NAME in app.sub_title and NAME in screen_text(app)
        table_text = screen_text(app)
        for i, shown in enumerate(SHOWN):
            assert f"{shown} asks {i}" in table_text
            body = app.screen.query_one("#example").content.plain
            assert f"{shown} asks {i}" in body and f"{shown} answers" in body
            assert "\x1b" not in screen_text(app)
            await pilot.press("j")
            await pilot.pause()
        await pilot.press("p")
        await pilot.pause()
        prompt = app.screen.query_one("#problems").get_option_at_index(0).prompt
        assert "unknown role '[red]boss'" in prompt.plain
        await pilot.press("enter", "escape", "s")
        await settle(app, pilot)
        await pilot.press("space", "slash", *"[@click", "enter")
        await pilot.pause(0.4)
        assert app.is_running


async def test_hostile_text_in_notifications(tmp_path: Path) -> None:
    ws = hostile_workspace(tmp_path / "ws")
    app = TunedeckApp(initial_state(ws, str(ws / NAME), None, None))
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("space")
        (ws / NAME).write_text((ws / NAME).read_text() + "\n", encoding="utf-8")  # conflict on save
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "[b]x[@click=app.quit]q" in text.replace("\n", "")
        assert app.is_running


async def test_hostile_config_file(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    bad = ws / "[@click=app.quit]q.toml"
    bad.write_text('[model]\npath = "[bold red]x[/]"\n[train]\niters = [link=x]\n', encoding="utf-8")
    app = make_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("2")
        await settle(app, pilot)
        app.screen.open_file(bad)
        await settle(app, pilot)
        banner = app.screen.query_one("#banner").render().plain
        assert "[@click=app.quit]q.toml" in banner and "iters = [link=x]" in banner
        field = app.screen.field("model.path")
        field.editor.focus()
        field.value = "\x1b[31m[@click=app.quit]"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert app.is_running


@pytest.mark.parametrize("model", ["[@click=app.quit]q/\x1b[31mx"])
async def test_hostile_model_name_in_header_and_token_view(tmp_path: Path, model: str) -> None:
    ws = make_workspace(tmp_path / "ws", n=3)
    app = TunedeckApp(initial_state(ws, None, None, model))
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        assert "[@click=app.quit]q/␛[31mx" in app.sub_title
        await pilot.press("t")
        await wait_for(pilot, lambda: app.model_status.state == "failed", 30, "the tokenizer to fail")
        await settle(app, pilot)
        assert "No tokenizer for [@click=app.quit]q/␛[31mx" in app.screen.query_one("#token-summary").render().plain
        assert app.is_running
