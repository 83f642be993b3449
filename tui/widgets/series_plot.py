"""A plotext line plot of named series (loss, KTO rewards), downsampled to the widget's width."""

from __future__ import annotations

from collections.abc import Mapping

from textual_plotext import PlotextPlot

from .train_history import Series


def downsample(xs: list[float], ys: list[float], n: int) -> tuple[list[float], list[float]]:
    """At most about `n` evenly spaced points, always keeping the last one."""
    if len(xs) <= n:
        return list(xs), list(ys)
    k = -(-len(xs) // n)
    idx = list(range(0, len(xs), k))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


class SeriesPlot(PlotextPlot):
    """Draws the given series on `draw()`; `shown` holds what was last drawn (name -> (xs, ys))."""

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.shown: dict[str, tuple[list[float], list[float]]] = {}

    def on_mount(self) -> None:
        super().on_mount()
        self.draw({})

    def draw(self, series: Mapping[str, Series]) -> None:
        width = max(self.size.width * 2, 40)  # braille markers: two points per cell
        self.shown = {name: downsample(s.xs, s.ys, width) for name, s in series.items() if len(s)}
        plt = self.plt
        plt.clear_data()
        plt.title(self.title)
        plt.xlabel("step")
        for name, (xs, ys) in self.shown.items():
            plt.plot(xs, ys, label=name, marker="braille")
        self.refresh()
