"""The app as a user reads it (issue 21): Train plots and numbers, the log's wrapping, the memory gauges' units,
the screen bar, filters picked directly, the quit dialog, the palette's Keys and Screenshot, narrow columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.color import Color
from textual.widgets import DataTable, RichLog

from tests.tui.conftest import make_app, make_workspace, screen_text, settle, text_of, wait_for
from tests.tui.test_runs_screen import fake_run
from tests.tui.test_snapshots import RUN, kto_events
from tunedeck.themes import THEMES
from tunedeck.tui.screens.dialogs import QuitScreen
from tunedeck.tui.screens.help import HelpScreen
from tunedeck.tui.screens.train import EMA, STYLES, TrainScreen
from tunedeck.tui.widgets.screen_tabs import ScreenTabs
from tunedeck.tui.widgets.series_plot import SeriesPlot, nice_ticks


def luminance(c: Color) -> float:
    """WCAG relative luminance."""
    def lin(v: int) -> float:
        x = v / 255
        return x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4
    return 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b)


def contrast(a: Color, b: Color) -> float:
    """WCAG contrast ratio."""
    la, lb = sorted((luminance(a), luminance(b)))
    return (lb + 0.05) / (la + 0.05)


async def attached(pilot, ws: Path) -> TrainScreen:
    app = pilot.app
    await settle(app, pilot)
    await app.switch_mode("train")
    await pilot.pause()
    screen = app.screen
    screen.attach(ws / "runs" / RUN)
    await wait_for(pilot, lambda: screen.status == "stopped", 120, "the stopped status")
    await pilot.pause(0.6)
    return screen


async def test_kl_has_its_own_plot_and_the_loss_its_moving_average(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=10)
    fake_run(ws, RUN, kto_events())
    app = make_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await attached(pilot, ws)
        assert set(screen.query_one("#kto-plot", SeriesPlot).shown) == {"rewards_chosen", "rewards_rejected", "margin"}
        assert set(screen.query_one("#kl-plot", SeriesPlot).shown) == {"kl"}
        loss = screen.query_one("#loss-plot", SeriesPlot)
        assert set(loss.shown) == {"train loss", EMA, "val loss"}
        raw = loss.shown["train loss"][1]
        smooth = loss.shown[EMA][1]
        assert max(smooth) - min(smooth) < max(raw) - min(raw)  # smoother than the raw points
        assert "train (EMA)" in text_of(screen, "#loss-panel PlotLegend")
        await pilot.press("e")
        await pilot.pause(0.6)
        assert set(loss.shown) == {"train loss", "val loss"} and not screen.smooth
        # every plot spans the same steps (aligned x-axes), with whole-number ticks
        assert {screen.query_one(f"#{p}", SeriesPlot).x_max for p in ("loss-plot", "kto-plot", "kl-plot")} == {60}
        assert all(t == int(t) for t in nice_ticks(0, 60, 7, integer=True))


async def test_status_line_shows_validation_margin_accuracy_and_both_token_rates(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=10)
    fake_run(ws, RUN, kto_events())
    app = make_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await attached(pilot, ws)
        stats = text_of(screen, "#stats")
        assert "val margin +2.667" in stats and "reward acc 90%" in stats
        assert "33 trained tok/s" in stats and "157 seq tok/s" in stats


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_log_wraps_within_its_width_losing_nothing(tmp_path: Path, size: tuple[int, int]) -> None:
    ws = make_workspace(tmp_path / "ws", n=10)
    fake_run(ws, RUN, kto_events())
    app = make_app(ws)
    async with app.run_test(size=size) as pilot:
        screen = await attached(pilot, ws)
        log = screen.query_one("#log", RichLog)
        lines = [line.text for line in log.lines]
        assert all(len(line.rstrip()) <= log.scrollable_content_region.width for line in lines)
        joined = " ".join(" ".join(line.split()) for line in lines)
        assert "outside [1, 1.33]: the Config screen's w suggests weights for this split" in joined


async def test_a_log_filled_before_the_narrow_layout_is_wrapped_again_at_its_width(tmp_path: Path) -> None:
    """Attached from the Runs screen, the Train screen's first layout is the wide one (a 14-column log) until
    its narrow class applies: the lines written then are wrapped again at the log's full width."""
    ws = make_workspace(tmp_path / "ws", n=10)
    fake_run(ws, RUN, kto_events())
    app = make_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await app.switch_mode("runs")
        await wait_for(pilot, lambda: app.screen.query_one(DataTable).row_count == 1, 120, "the run")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.status == "stopped", 120,
                       "the attached run")
        await pilot.pause(0.6)
        lines = [line.text.rstrip() for line in app.screen.query_one("#log", RichLog).lines]
        assert "stopped @40 (SIGTERM); checkpoint None" in lines


async def test_memory_gauges_keep_their_units_and_name_the_budget(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=10)
    fake_run(ws, RUN, kto_events())
    app = make_app(ws, budget_gb=22.8)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await attached(pilot, ws)
        await wait_for(pilot, lambda: screen._forecast_gb is not None, 120, "the forecast")
        await pilot.pause(0.6)
        value = screen.query_one("#gauge-rss .gauge-value").render()
        assert "GB forecast" in str(value) and "budget 22.8 GB" in (screen.query_one("#gauges").border_title or "")
        assert "GB forecast" in screen_text(app)  # not cut by the panel's width
    app = make_app(ws, budget_gb=22.8)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await attached(pilot, ws)
        assert screen.has_class("-narrow") and not screen.query_one("#gauge-rss").display
        assert "mem process 1.30" in text_of(screen, "#gauges-line")


async def test_at_80x24_every_kto_plot_the_one_line_gauges_and_the_log_are_on_screen(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=10)
    fake_run(ws, RUN, kto_events())
    app = make_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await attached(pilot, ws)
        area = screen.query_one("#plots").region
        for plot_id in ("loss-plot", "kto-plot", "kl-plot"):
            plot = screen.query_one(f"#{plot_id}", SeriesPlot)
            assert area.contains_region(plot.region) and plot.size.height >= 3, plot_id  # none scrolled away
        text = screen_text(app)
        for legend in ("train (EMA)", "chosen", "rejected", "margin", "KL"):
            assert legend in text, legend
        line = screen.query_one("#gauges-line")
        assert line.size.height == 1 and "GB forecast" in text_of(screen, "#gauges-line")
        log = screen.query_one("#log", RichLog)
        assert log.size.height >= 3 and "stopped @40" in text


def test_series_are_apart_without_colour_and_readable_in_every_theme() -> None:
    plots = (("train loss", EMA, "val loss"), ("rewards_chosen", "rewards_rejected", "margin"))
    for names in plots:
        assert len({STYLES[n].marker for n in names}) == len(names)
    for theme in THEMES:
        surface = Color.parse(theme.surface)
        for name, style in STYLES.items():
            color = Color.parse(getattr(theme, style.color))
            assert contrast(color, surface) >= 3, (theme.name, name)


async def test_screen_bar_shows_the_active_screen_switches_on_click_and_badges_set_aside_lines(tmp_path: Path) -> None:
    good = make_workspace(tmp_path / "tmp", n=3) / "data.jsonl"
    lines = good.read_text().splitlines() + ["{not json"]
    app = make_app(make_workspace(tmp_path / "ws", lines=lines))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        bar = app.screen.query_one(ScreenTabs)
        assert bar.active == "data" and "1 line set aside" in str(bar.render())
        first, _end, _mode = next(span for span in bar.spans if span[2] == "runs")
        await pilot.click(ScreenTabs, offset=(first + 1, 0))
        await settle(app, pilot)
        assert app.current_mode == "runs"
        assert app.screen.query_one(ScreenTabs).active == "runs"
        assert "1 line set aside" in str(app.screen.query_one(ScreenTabs).render())  # on every screen


async def test_filters_are_picked_by_a_click(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", n=30))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        status = app.screen.query_one("#status")
        x = str(status.render()).index("undesirable") + 1
        await pilot.click("#status", offset=(x + 1, 0))  # + the padding's cell
        await settle(app, pilot)
        assert app.screen.filter == "undesirable"
        labels = [app.screen.label_of(app.state.dataset.examples[int(k.value)]) for k in app.screen.query_one(DataTable).rows]
        assert labels and not any(labels)


async def test_quit_dialog_names_the_file_and_the_number_of_edits(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", n=10))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("space", "j", "space")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        assert "2 label edits to data.jsonl" in screen_text(app)


async def test_palette_has_one_keys_screen_and_saves_screenshots_into_the_workspace(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home-without-downloads"))
    ws = make_workspace(tmp_path / "ws", n=10)
    app = make_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert titles.count("Keys") == 1
        next(c for c in app.get_system_commands(app.screen) if c.title == "Keys").callback()
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        app.action_screenshot()
        await pilot.pause()
        shots = list((ws / "screenshots").glob("*.svg"))
        assert len(shots) == 1 and shots[0].read_text().startswith("<svg")
        assert any(str(shots[0]) in n.message for n in app._notifications)


async def test_narrow_runs_keep_duration_and_data_keeps_the_prompt(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=10)
    fake_run(ws, RUN, kto_events())
    app = make_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        assert [c.label.plain for c in table.columns.values()] == ["#", "label", "tokens", "prompt"]
        await app.switch_mode("runs")
        await wait_for(pilot, lambda: app.screen.query_one(DataTable).row_count > 0, 120, "the run")
        assert "duration" in [c.label.plain for c in app.screen.query_one(DataTable).columns.values()]
        assert "0m41s" in screen_text(app)


async def test_forecast_uses_the_datasets_lengths_and_says_no_developer_sentence(tmp_path: Path) -> None:
    from tunedeck.tui.widgets.forecast_panel import forecast_lengths

    app = make_app(make_workspace(tmp_path / "ws", n=10))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.state.token_lengths = ([100, 700, 300], [20, 90, 400])
        assert forecast_lengths(app.state, 512) == {"seq_len": 512, "completion_len": 400}
        await app.switch_mode("config")
        await settle(app, pilot)
        text = app.screen.query_one("#forecast").render().plain
        assert "pass completion_len" not in text and "budget" in text
