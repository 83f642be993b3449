"""The compare view (`c` on the Runs screen): the marked runs' loss, KTO margin and reward accuracy overlaid,
by step or by trained tokens (`x`), one legend naming each run with its colour and marker, and the config
keys whose values differ between the runs."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Header, Static

from tunedeck.core.compare import CompareError, Comparison, compare
from tunedeck.core.text import one_line

from ..safe import plain
from ..widgets.key_footer import KeyFooter
from ..widgets.series_plot import LineStyle, PlotLegend, SeriesPlot
from ..widgets.train_history import Series
from .base import TunedeckScreen

#: one marker per run, all distinct (what tells the runs apart without colour, NO_COLOR)
MARKERS = ("•", "+", "x", "o", "*", "#", "@", "%")
COLORS = ("primary", "accent", "success", "error", "warning", "secondary", "foreground")
MAX_RUNS = len(MARKERS)
#: series (core.compare.FIELDS) -> plot title
PLOTS = {"loss": "loss", "margin": "KTO margin", "reward_accuracy": "reward accuracy"}


def style(i: int) -> LineStyle:
    """The i-th run's colour and marker."""
    return LineStyle(COLORS[i % len(COLORS)], MARKERS[i % MAX_RUNS])


class CompareScreen(TunedeckScreen):
    DEFAULT_CSS = """
    CompareScreen #compare-status { height: 1; padding: 0 1; color: $text-muted; }
    CompareScreen #compare-legend { height: auto; }
    CompareScreen #compare-plots { height: 1fr; min-height: 8; }
    CompareScreen #compare-lower { height: 1fr; }
    CompareScreen .compare-panel { width: 1fr; height: 1fr; }
    CompareScreen .compare-panel > SeriesPlot { height: 1fr; }
    CompareScreen #compare-diff { height: auto; max-height: 8; border-top: solid $panel; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back", id="compare.back", tooltip="Back to the Runs screen"),
        Binding("x", "toggle_x", "Steps/tokens", id="compare.x",
                tooltip="Plot against the step or against the tokens trained so far"),
    ]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = run_dirs
        self.comparison: Comparison | None = None
        self.by_tokens = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="compare-status")
        yield PlotLegend(id="compare-legend")
        with Vertical(id="compare-plots"):
            yield self._panel("loss")
            with Horizontal(id="compare-lower"):
                yield self._panel("margin")
                yield self._panel("reward_accuracy")
        yield DataTable(id="compare-diff", cursor_type="row", zebra_stripes=True)
        yield KeyFooter()

    @staticmethod
    def _panel(name: str) -> Vertical:
        return Vertical(PlotLegend(id=f"{name}-title"), SeriesPlot(PLOTS[name], id=f"{name}-plot"),
                        classes="compare-panel")

    def on_mount(self) -> None:
        self.query_one("#compare-status", Static).update(plain(f"Reading {len(self.run_dirs)} runs…"))
        self._load(self.run_dirs)

    @work(thread=True, exclusive=True, group="compare")
    def _load(self, run_dirs: list[Path]) -> None:
        try:
            result: Comparison | str = compare(run_dirs)
        except (CompareError, OSError) as e:
            result = str(e)
        self.app.call_from_thread(self._loaded, result)

    def _loaded(self, result: Comparison | str) -> None:
        if isinstance(result, str):
            self.query_one("#compare-status", Static).update(plain(one_line(result), "bold $error"))
            return
        self.comparison = result
        labels = [one_line(r.label) for r in result.runs]
        self.query_one("#compare-legend", PlotLegend).show("runs", [(n, style(i)) for i, n in enumerate(labels)])
        self._fill_diff(result, labels)
        self.redraw()

    def _fill_diff(self, c: Comparison, labels: list[str]) -> None:
        table = self.query_one("#compare-diff", DataTable)
        table.clear(columns=True)
        table.add_columns(Text("config key"), *(Text(n) for n in labels))
        for key, values in c.config_diff.items():
            table.add_row(Text(key), *(Text(one_line(str(v))) for v in values), key=key)
        if not c.config_diff:
            table.add_row(Text("(no config key differs)"), *(Text("") for _ in labels))

    def redraw(self) -> None:
        """Every plot, against the current x axis."""
        c = self.comparison
        if c is None:
            return
        axis = "tokens trained" if self.by_tokens else "step"
        self.query_one("#compare-status", Static).update(
            plain(f"{len(c.runs)} runs by {axis} (x: by {'step' if self.by_tokens else 'tokens trained'})"))
        styles = {r.label: style(i) for i, r in enumerate(c.runs)}
        for name, title in PLOTS.items():
            series: dict[str, Series] = {}
            for r in c.runs:
                xs, ys = r.curves.series(name, self.by_tokens)
                s = series[r.label] = Series()
                for x, y in zip(xs, ys, strict=True):
                    s.add(x, y)
            empty = not any(len(s) for s in series.values())
            self.query_one(f"#{name}-title", PlotLegend).show(f"{title}{': none recorded' if empty else ''}", [])
            self.query_one(f"#{name}-plot", SeriesPlot).draw(series, styles)

    def action_toggle_x(self) -> None:
        self.by_tokens = not self.by_tokens
        self.redraw()

    def action_back(self) -> None:
        self.app.pop_screen()
