"""The Config screen: live validation, saving, opening (broken) files, KTO weights, state updates."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from tests.tui.conftest import make_app, make_workspace, settle
from tunedeck.core import config as C
from tunedeck.core.data import load, suggest_kto_weights
from tunedeck.core.forecast import Forecast
from tunedeck.tui.screens.config import ConfigScreen
from tunedeck.tui.screens.dialogs import PathScreen
from tunedeck.tui.widgets.forecast_panel import ForecastPanel


async def open_config(app, pilot) -> ConfigScreen:
    await settle(app, pilot)
    await pilot.press("2")
    await settle(app, pilot)
    assert isinstance(app.screen, ConfigScreen)
    return app.screen


async def type_into(pilot, screen: ConfigScreen, key: str, text: str) -> None:
    """Focus the field's Input, clear it and type `text` as a user would."""
    editor = screen.field(key).editor
    assert isinstance(editor, Input)
    editor.focus()
    editor.value = ""
    await pilot.press(*text)
    await pilot.pause()


def message(screen: ConfigScreen, key: str) -> str:
    """The field's message ("" when it has none)."""
    return " ".join(m.render().plain for m in screen.field(key).query(".field-message"))


def banner(screen: ConfigScreen) -> str:
    return screen.query_one("#banner").render().plain


async def test_field_messages_follow_typing(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        assert set(screen.fields) == set(C.FIELD_TYPES)  # the form covers every key
        assert screen.form_values() == app.state.config.to_dict()
        field = screen.field("train.batch_size")
        await type_into(pilot, screen, "train.batch_size", "abc")
        assert field.has_class("-error") and "expected an integer" in message(screen, "train.batch_size")
        assert "1 error" in banner(screen)
        assert app.state.config.train.batch_size == 4  # the last valid config stays in use
        await type_into(pilot, screen, "train.batch_size", "3")
        assert field.has_class("-warning") and not field.has_class("-error")
        assert "noisy below 4" in message(screen, "train.batch_size")
        await type_into(pilot, screen, "train.batch_size", "8")
        assert not field.has_class("-error") and not field.has_class("-warning")
        assert message(screen, "train.batch_size") == ""
        assert app.state.config.train.batch_size == 8 and app.state.dirty == {"config"}
        assert "batch_size = 8" in screen.query_one("#toml").text
        await type_into(pilot, screen, "lora.dropout", "1.5")
        assert "expected <= 0.9" in message(screen, "lora.dropout")


async def test_save_writes_valid_toml_atomically(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        await type_into(pilot, screen, "train.iters", "77")
        screen.field("lora.keys").value = ["q_proj", "v_proj"]
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert app.state.dirty == set() and "saved" in banner(screen)
        await type_into(pilot, screen, "train.iters", "x")
        await pilot.press("ctrl+s")
        await settle(app, pilot)
    cfg, _ = C.load(ws / "tunedeck.toml")
    assert cfg.train.iters == 77 and cfg.lora.keys == ["q_proj", "v_proj"]
    assert sorted(p.name for p in ws.iterdir()) == ["data.jsonl", "tunedeck.toml"]  # no temp files left


async def test_invalid_toml_opens_with_line_and_column(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    broken = ws / "broken.toml"
    broken.write_text("[train]\niters = 10\nbatch_size = = 4\n", encoding="utf-8")
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert isinstance(app.screen, PathScreen)
        app.screen.query_one(Input).value = ""
        await pilot.press(*"broken.toml", "enter")
        await settle(app, pilot)
        text = banner(screen)
        assert "invalid TOML" in text and "line 3, column 14" in text
        assert "batch_size = = 4" in text
        assert app.state.config_path == broken and app.state.dirty == {"config"}
        assert app.is_running


async def test_open_fills_the_form_and_reports_file_errors(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    other = ws / "other.toml"
    other.write_text('[train]\niters = 33\nbatch_size = "four"\nbogus = 1\n[kto]\nbeta = 0.3\n', encoding="utf-8")
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        screen.open_file(other)
        await settle(app, pilot)
        values = screen.form_values()
        assert values["train"]["iters"] == 33 and values["kto"]["beta"] == 0.3
        assert values["model"]["path"] == C.Config().model.path  # keys the file lacks get defaults
        assert "expected an integer" in message(screen, "train.batch_size")
        assert "train.bogus" in banner(screen)
        assert app.state.dirty == set()


async def test_suggest_kto_weights_from_the_data(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=60)
    ds = load(ws / "data.jsonl")
    wd, wu = suggest_kto_weights(ds.desirable, ds.undesirable)
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        await pilot.press("w")
        await settle(app, pilot)
        assert screen.field("kto.desirable_weight").value == wd
        assert screen.field("kto.undesirable_weight").value == wu
        assert (wd, wu) != (1.0, 1.0) and app.state.config.kto.undesirable_weight == wu


async def test_valid_changes_reach_the_other_screens(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=12)
    (ws / "other.jsonl").write_text("\n".join((ws / "data.jsonl").read_text().splitlines()[:5]) + "\n")
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        screen.field("data.path").value = "other.jsonl"
        screen.field("model.path").value = "some/model"
        await settle(app, pilot)
        assert app.state.data_path == ws / "other.jsonl" and app.state.model == "some/model"
        assert "other.jsonl" in app.sub_title and "some/model" in app.sub_title
        await pilot.press("escape", "1")
        await settle(app, pilot)
        assert len(app.state.dataset.examples) == 5


async def test_memory_forecast_panel(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"), budget_gb=24.0)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        text = screen.query_one("#forecast").render().plain
        assert "of 24.0 GB" in text and " fits " in text and "weights" in text and "activations" in text
        screen.field("model.path").value = "mistralai/Mistral-7B-Instruct-v0.3"
        screen.field("data.max_seq_len").value = 8192
        screen.field("train.batch_size").value = 64
        await settle(app, pilot)
        assert "won't fit" in screen.query_one("#forecast").render().plain
        panel = screen.query_one(ForecastPanel)
        panel.show(Forecast(30.0, {"weights": 4.0, "activations": 26.0}, 24.0, "won't fit",
                            ["train.batch_size = 2 → 14.1 GB"]))
        await pilot.pause()
        assert "→ train.batch_size = 2 → 14.1 GB" in panel.render().plain


async def test_opening_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO named as the config would block a plain read forever; the screen says what it is instead."""
    import os

    ws = make_workspace(tmp_path / "ws")
    fifo = ws / "pipe.toml"
    os.mkfifo(fifo)
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        before = screen.form_values()
        screen.open_file(fifo)
        await settle(app, pilot)  # returns only because nothing waits on the FIFO
        shown = [n.message for n in app._notifications]
        assert any("pipe.toml" in m and "not a regular file" in m for m in shown), shown
        assert screen.form_values() == before and app.state.config_path != fifo.resolve()


async def test_a_learning_rate_that_underflows_is_refused_in_the_form(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_config(app, pilot)
        await type_into(pilot, screen, "train.learning_rate", "1e-400")
        await settle(app, pilot)
        assert "too small" in message(screen, "train.learning_rate")  # not a silent 0 (= the default)
        await type_into(pilot, screen, "train.learning_rate", "2e-5")
        await settle(app, pilot)
        assert message(screen, "train.learning_rate") == "" and app.state.config.train.learning_rate == 2e-5


async def test_tab_moves_focus_without_rebuilding_the_footer(tmp_path: Path) -> None:
    """Textual's Footer rebuilds itself (and re-lays out the whole form) on every change of focus; the keys a text
    field takes for typing are dimmed in place instead."""
    from textual.widgets._footer import FooterKey

    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_config(app, pilot)
        screen.query("ConfigField Input").first().focus()
        await settle(app, pilot)
        keys = {id(k): k for k in screen.query(FooterKey)}
        assert "w" in {k.key for k in keys.values()}
        for _ in range(8):  # through Inputs, Selects and a Switch
            await pilot.press("tab")
            await pilot.pause()
            assert {id(k) for k in screen.query(FooterKey)} == set(keys)
            in_text_field = isinstance(app.focused, Input)
            assert next(k for k in keys.values() if k.key == "w").has_class("-disabled") == in_text_field


async def test_forecast_follows_the_datasets_token_counts(tmp_path: Path) -> None:
    """Counted after the Config screen opened, the dataset's lengths replace the max_seq_len upper bound."""
    app = make_app(make_workspace(tmp_path / "ws"), budget_gb=24.0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_config(app, pilot)
        app.update_state(token_lengths=None)
        await settle(app, pilot)
        assert "upper bound" in screen.query_one("#forecast").render().plain
        app.update_state(token_lengths=([120, 77, 33], [40, 12, 5]))
        await settle(app, pilot)
        text = screen.query_one("#forecast").render().plain
        assert "tokens, 40 trained" in text and "upper bound" not in text  # (sequences padded as packed)


async def test_every_fields_help_is_whole_at_80_columns(tmp_path: Path) -> None:
    """Focusing each field shows its whole help (the key and every word of its text) in the form's two-line help
    area of an 80 x 24 terminal: nothing of it cut off at the edge."""
    from tunedeck.core.config_help import HELP

    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_config(app, pilot)
        area = screen.query_one("#field-help")
        for key in C.FIELD_TYPES:
            screen.field(key).editor.focus()
            await pilot.pause()
            shown = " ".join(strip.text for strip in area.render_lines(area.region.reset_offset)).split()
            assert shown == f"{key}  {HELP[key]}".split(), key
