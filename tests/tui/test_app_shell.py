"""The app shell: screen keys, palette, help, themes, quitting, small terminals, lazy demo model."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from textual.binding import Binding
from textual.widgets import Input

from tests.tui.conftest import make_app, make_workspace, screen_text, settle, wait_for
from tunedeck.core.demo import sample_dataset
from tunedeck.core.settings import load_settings, settings_path
from tunedeck.tui.app import SCREEN_CLASSES, TunedeckApp, initial_state, screen_class
from tunedeck.tui.screens.dialogs import QuitScreen
from tunedeck.tui.screens.help import HelpScreen
from tunedeck.tui.state import ModelStatus


async def test_number_keys_switch_screens(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        for key, mode in zip("23451", ("config", "train", "chat", "runs", "data"), strict=True):
            app.screen.set_focus(None)  # a focused text field (the chat prompt) keeps the digit
            await pilot.press(key)
            await pilot.pause()
            assert app.current_mode == mode
            assert app.title == f"tunedeck · {mode.title()}"
        assert "data.jsonl" in app.sub_title and "model demo" in app.sub_title and "run none" in app.sub_title


async def test_number_keys_type_into_text_fields(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("slash", "2", "3")
        await pilot.pause()
        assert isinstance(app.focused, Input) and app.focused.value == "23"
        assert app.current_mode == "data"
        await pilot.press("escape", "5")
        await pilot.pause()
        assert app.current_mode == "runs"


async def test_palette_switches_screens_runs_actions_and_themes(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        for query in ("light", "config"):  # fuzzy: "Theme: tunedeck-light", "Screen: Config"
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*query)
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
        assert app.current_mode == "config"
        assert app.theme == "tunedeck-light"
        await pilot.press("1", "ctrl+p")
        await pilot.press(*"label")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen.edits  # the palette ran the Data screen's label toggle
    assert load_settings()["theme"] == "tunedeck-light"
    assert settings_path().is_relative_to(tmp_path)
    assert make_app(make_workspace(tmp_path / "ws2")).theme == "tunedeck-light"


async def test_themes_registered_and_default() -> None:
    app = TunedeckApp(initial_state(Path.cwd(), str(sample_dataset()), None, None))
    assert app.theme == "tunedeck"
    assert {"tunedeck", "tunedeck-light", "tunedeck-contrast"} <= set(app.available_themes)


def test_stylesheets_use_theme_variables_only() -> None:
    import re

    import tunedeck

    root = Path(list(tunedeck.__path__)[0])
    for name in ("themes/tunedeck.tcss", "tui/screens/data.tcss", "tui/screens/config.tcss"):
        text = (root / name).read_text(encoding="utf-8")
        assert not re.search(r"#[0-9a-fA-F]{3,8}\b", text), name
        assert not re.search(r"\b(rgb|hsl)a?\(", text), name


def test_every_binding_has_id_and_tooltip() -> None:
    """Every class in the app that declares key bindings (screens, dialogs, widgets): each has an id and a tooltip."""
    import importlib
    import inspect
    import pkgutil

    import tunedeck.tui.screens
    import tunedeck.tui.widgets

    owners = {TunedeckApp}
    for pkg in (tunedeck.tui.screens, tunedeck.tui.widgets):
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            owners |= {c for _, c in inspect.getmembers(module, inspect.isclass)
                       if c.__module__ == module.__name__ and c.__dict__.get("BINDINGS")}
    names = {o.__name__ for o in owners}
    assert {"DataScreen", "ConfigScreen", "TrainScreen", "ChatScreen", "RunsScreen", "HelpScreen", "QuitScreen",
            "PathScreen"} <= names, names
    assert any("Confirm" in n for n in names), names  # the run-confirm dialog
    for owner in owners:
        for binding in Binding.make_bindings(owner.__dict__["BINDINGS"] if owner is not TunedeckApp else owner.BINDINGS):
            assert binding.id and binding.tooltip, (owner.__name__, binding.key)


async def test_help_lists_every_key_of_every_screen(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 60)) as pilot:
        await settle(app, pilot)
        for key in ("question_mark", "f1"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            text = " ".join(str(s.render()) for s in app.screen.query("Static"))
            for owner in (TunedeckApp, *map(screen_class, SCREEN_CLASSES)):
                for b in Binding.make_bindings(owner.BINDINGS):
                    assert b.description in text, b
            for title in ("Data screen (1)", "Config screen (2)", "Train screen (3)", "Chat screen (4)", "Runs screen (5)"):
                assert title in text
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)


async def test_quit_without_edits_exits_zero(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert app.return_value == 0


@pytest.mark.parametrize("choice", ["d", "s"])
async def test_quit_with_unsaved_edits_asks(tmp_path: Path, choice: str) -> None:
    ws = make_workspace(tmp_path / "ws")
    before = (ws / "data.jsonl").read_bytes()
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("space", "ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running and app.state.dirty == {"data"}
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press(choice)
        await settle(app, pilot)
    assert app.return_value == 0
    after = (ws / "data.jsonl").read_bytes()
    assert (after == before) is (choice == "d")


async def test_no_color_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(make_workspace(tmp_path / "ws"))
    assert app.no_color
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert "desirable" in screen_text(app)


@pytest.mark.parametrize("size", [(80, 24), (60, 20)])
async def test_small_terminals(tmp_path: Path, size: tuple[int, int]) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        text = screen_text(app)
        assert "desirable" in text and "undesirable" in text and "#1 · line 1" in text
        await pilot.press("j")
        await pilot.pause()
        assert "#2 · line 2" in screen_text(app)
        assert app.screen.has_class("-narrow") is (size[0] < 76)
        if size[0] < 76:
            await pilot.press("2")
            await settle(app, pilot)
            assert "[model]" in screen_text(app) and not app.screen.query_one("#side").display


async def test_demo_model_is_built_only_when_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Browsing needs no model; the token view builds the demo model in a worker, reporting progress."""
    from tunedeck.core import demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert not demo.default_dir().exists()
        assert app.model_status.state == "idle"
        seen: list[ModelStatus] = []
        app.watch(app, "model_status", lambda status: seen.append(status), init=False)
        busy = app.screen.query_one("#token-busy")
        await pilot.press("t")
        await wait_for(pilot, lambda: app.model_status.state == "ready", 120, "the demo model")
        await settle(app, pilot)
        progress = [s.message for s in seen if s.state == "loading"]
        assert any("training tokenizer" in m for m in progress), progress
        assert (demo.default_dir() / "config.json").is_file()
        assert not busy.has_class("-busy")
        assert "completion (trained)" in screen_text(app)
        app.model_status = ModelStatus("loading", "building", "demo")  # what the token view shows meanwhile
        await pilot.pause()
        assert busy.has_class("-busy") and "building" in str(busy.render())


def test_app_imports_no_model_libraries_and_loads_every_screens_css() -> None:
    """The first frame waits for the app's imports: not mlx_lm (it loads transformers and torch: 3-6 s on a
    2-core machine), NumPy or MLX, nor the screens not shown first; their stylesheets still load at start."""
    code = ("import sys, tunedeck.tui.app; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'mlx', 'mlx_lm', 'numpy', 'torch', 'transformers', 'jinja2', 'plotext'}), "
            "sorted(m for m in sys.modules if m.startswith('tunedeck.tui.screens.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] ['tunedeck.tui.screens.base', 'tunedeck.tui.screens.data', " \
                  "'tunedeck.tui.screens.data_list', 'tunedeck.tui.screens.dialogs', " \
                  "'tunedeck.tui.screens.help']", out
    for mode in SCREEN_CLASSES:
        cls = screen_class(mode).__mro__[1]  # the screen itself (screen_class adds the screen bar)
        assert Path(inspect.getfile(cls)).parent / cls.CSS_PATH in TunedeckApp.CSS_PATH, mode
