"""The Train plots draw whatever numbers an events file holds: huge, tiny and non-finite values never crash."""

from __future__ import annotations

from textual.app import App, ComposeResult

from tunedeck.tui.widgets.series_plot import PLOT_LIMIT, SeriesPlot
from tunedeck.tui.widgets.train_history import Series


class PlotApp(App[None]):
    def compose(self) -> ComposeResult:
        yield SeriesPlot("loss", id="plot")


async def test_extreme_values_are_drawn_clipped_not_crashing() -> None:
    loss, kl = Series(), Series()
    for step, y in enumerate([0.7, 1e308, -1e308, float("inf"), float("nan"), 5e-324, 0.3]):
        loss.add(step, y)
    for step in range(5):
        kl.add(step, float("nan"))
    app = PlotApp()
    async with app.run_test(size=(80, 24)) as pilot:
        plot = app.query_one(SeriesPlot)
        plot.draw({"loss": loss, "kl": kl})
        await pilot.pause()
        plot.render()  # plotext builds the canvas here: it raised OverflowError on 1e308 before
        xs, ys = plot.shown["loss"]
        assert xs == [0, 1, 2, 5, 6] and ys == [0.7, PLOT_LIMIT, -PLOT_LIMIT, 5e-324, 0.3]
        assert "kl" not in plot.shown  # nothing finite to draw
