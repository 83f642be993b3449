"""A plotext line plot of named series (loss, KTO rewards, KL), downsampled to the widget's width, with its
legend on a line of its own above the plot (never over the data), integer step ticks, and y tick labels of a
fixed width so that plots stacked or side by side with the same step range have aligned x-axes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from textual.app import ComposeResult, RenderResult
from textual.color import Color
from textual.containers import Vertical
from textual.content import Content
from textual_plotext import PlotextPlot

from .quiet_static import QuietStatic
from .train_history import Series

Y_LABEL_WIDTH = 7  # every y tick label is padded to this width: the plot areas start at the same column
FRAMED_HEIGHT = 8  # plots shorter than this (a narrow or short terminal) drop their frame: its 2 rows are data


@dataclass(frozen=True)
class LineStyle:
    """How a series is drawn: a theme colour (a variable name: "primary", "error", ...), the marker used
    without colour (NO_COLOR: markers are all that tells series apart), and whether it is faint (raw points
    behind their moving average)."""

    color: str
    marker: str
    faint: bool = False


DEFAULT_STYLE = LineStyle("foreground", "•")


def downsample(xs: list[float], ys: list[float], n: int) -> tuple[list[float], list[float]]:
    """At most about `n` evenly spaced points, always keeping the last one."""
    if len(xs) <= n:
        return list(xs), list(ys)
    k = -(-len(xs) // n)
    idx = list(range(0, len(xs), k))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


# plotext computes its axis span in floats and converts it to int: values near the float limit overflow
# (1e307 with -1e308 raises OverflowError), so points are clipped to ±PLOT_LIMIT and non-finite ones dropped.
PLOT_LIMIT = 1e300


def drawable(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The finite points, with y clipped to ±PLOT_LIMIT (the exact value stays in the log and status line)."""
    pts = [(x, max(-PLOT_LIMIT, min(PLOT_LIMIT, y))) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


def nice_ticks(lo: float, hi: float, n: int, integer: bool = False) -> list[float]:
    """About `n` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of ten;
    whole numbers only when `integer`)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = max(m * mag for m in (1, 2, 2.5, 5) if m * mag <= raw * 1.001)  # at least n - 1 steps
    if integer:
        step = max(1.0, float(round(step)))
    first = math.ceil(lo / step - 1e-9) * step
    count = int((hi - first) / step + 1e-9) + 1
    return [first + i * step for i in range(min(count, 50))]


def tick_label(v: float) -> str:
    """A y tick label, right-aligned to Y_LABEL_WIDTH."""
    text = "0" if abs(v) < 1e-12 else f"{v:.3g}"
    return text.rjust(Y_LABEL_WIDTH)


def _rgb(app_vars: Mapping[str, str], style: LineStyle) -> tuple[int, int, int]:
    color = Color.parse(app_vars.get(style.color) or app_vars["foreground"])
    if style.faint:
        color = Color.parse(app_vars["surface"]).blend(color, 0.45)
    return color.rgb


class SeriesPlot(PlotextPlot):
    """Draws the given series on `draw()`; `shown` holds what was last drawn (name -> (xs, ys))."""

    def __init__(self, title: str, *, ticks_below: bool = False, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.ticks_below = ticks_below  # a plot of the same steps right below shows them: unframed, none here
        self.shown: dict[str, tuple[list[float], list[float]]] = {}
        self.x_max: float | None = None

    def on_mount(self) -> None:
        super().on_mount()
        self.draw({})

    def draw(self, series: Mapping[str, Series], styles: Mapping[str, LineStyle] | None = None,
             x_max: float | None = None) -> None:
        """Plot `series` (each in its style) over steps 0..`x_max` (default: the last step drawn)."""
        styles = styles or {}
        width = max(self.size.width * 2, 40)  # braille markers: two points per cell
        shown = {name: downsample(*drawable(s.xs, s.ys), width) for name, s in series.items() if len(s)}
        self.shown = {name: xy for name, xy in shown.items() if xy[0]}
        plt = self.plt
        plt.clear_data()
        # plotext gives a series without a colour (NO_COLOR) the next of its theme's colours as it is plotted, and
        # PlotextPlot sets that theme only as it renders: set it now, so that a plot drawn before its first
        # render (a panel just shown) takes the colours of one drawn after it.
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        plt.title("")
        plt.xlabel("")
        no_color = self.app.no_color
        app_vars = self.app.theme_variables
        for name, (xs, ys) in self.shown.items():
            style = styles.get(name, DEFAULT_STYLE)
            if no_color:
                plt.plot(xs, ys, marker=style.marker)
            else:
                plt.plot(xs, ys, marker="braille", color=_rgb(app_vars, style))
        self.x_max = x_max
        self.refresh()

    def render(self) -> RenderResult:
        self._axes(self.x_max)  # the ticks fit the size the plot has now
        return super().render()

    def _axes(self, x_max: float | None) -> None:
        """Integer step ticks from 0 to `x_max`; y ticks of a fixed label width over the drawn range; a frame
        when the plot is tall enough to spare its rows."""
        plt = self.plt
        framed = self.size.height >= FRAMED_HEIGHT
        plt.frame(framed)
        xs = [x for xs, _ in self.shown.values() for x in xs]
        ys = [y for _, ys in self.shown.values() for y in ys]
        hi_x = max(x_max or 0, max(xs, default=0), 1)
        plt.xlim(0, hi_x)
        x_ticks = [] if self.ticks_below and not framed else nice_ticks(0, hi_x, max(2, self.size.width // 10), True)
        plt.xticks(x_ticks, [str(int(t)) for t in x_ticks])
        lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if hi - lo < 1e-9 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5, hi + 0.5
        plt.ylim(lo, hi)
        y_ticks = nice_ticks(lo, hi, 2 if self.size.height < 4 else max(3, min(5, self.size.height // 3)))
        plt.yticks(y_ticks, [tick_label(t) for t in y_ticks])


class PlotLegend(QuietStatic):
    """A plot's title and its series' legend, on one line above the plot; where that line does not fit, the
    short title and one-cell swatches."""

    DEFAULT_CSS = "PlotLegend { height: 1; padding: 0 1; }"

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self._legend: tuple[str, str, Sequence[tuple[str, LineStyle]]] = ("", "", ())

    def show(self, title: str, entries: Sequence[tuple[str, LineStyle]], short_title: str | None = None) -> None:
        self._legend = (title, short_title or title, tuple(entries))
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        title, short, entries = self._legend
        full = self._content(title, entries, "━━ ", "  ")
        width = self.content_region.width
        self.update(full if not width or full.cell_length <= width else self._content(short, entries, "━ ", " "),
                    layout=False)

    def _content(self, title: str, entries: Sequence[tuple[str, LineStyle]], swatch: str, gap: str) -> Content:
        no_color = self.app.no_color
        parts: list[Content | tuple[str, str] | str] = [(title, "bold")]
        for label, style in entries:
            if no_color:
                parts += [gap, (f"{style.marker} ", "bold"), Content(label)]
            else:
                color = "$text-muted" if style.faint else f"${style.color}"
                parts += [gap, (swatch, f"bold {color}"), Content(label)]
        return Content.assemble(*parts)


class PlotPanel(Vertical):
    """A legend line over a `SeriesPlot`."""

    DEFAULT_CSS = "PlotPanel { height: 1fr; } PlotPanel > SeriesPlot { height: 1fr; }"

    def __init__(self, title: str, *, plot_id: str, short_title: str | None = None, ticks_below: bool = False,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.short_title = short_title
        self.plot_id = plot_id
        self.ticks_below = ticks_below

    def compose(self) -> ComposeResult:
        yield PlotLegend()
        yield SeriesPlot(self.title, ticks_below=self.ticks_below, id=self.plot_id)

    def draw(self, series: Mapping[str, Series], styles: Mapping[str, LineStyle], x_max: float | None,
             labels: Mapping[str, str] | None = None) -> None:
        """Plot `series` and list them (by `labels`, default their names) in the legend."""
        labels = labels or {}
        self.query_one(PlotLegend).show(self.title, [(labels.get(n, n), styles.get(n, DEFAULT_STYLE)) for n in series],
                                        self.short_title)
        self.query_one(SeriesPlot).draw(series, styles, x_max)

    @property
    def plot(self) -> SeriesPlot:
        return self.query_one(SeriesPlot)
