"""Memory gauges: process, MLX active/peak and system memory against the forecast (or the machine)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar

#: (gauge id, label, step-event field)
GAUGES = (
    ("rss", "process", "rss_gb"),
    ("mlx-active", "MLX active", "mlx_active_gb"),
    ("mlx-peak", "MLX peak", "peak_memory_gb"),
    ("system", "system", "sys_used_gb"),
)


class Gauge(Horizontal):
    """A label, a bar and a value: `update_value(value, scale, note)`."""

    DEFAULT_CSS = """
    Gauge { height: 1; }
    Gauge > .gauge-name { width: 12; }
    Gauge > ProgressBar { width: auto; }
    Gauge > ProgressBar > Bar { width: 20; }
    Gauge > .gauge-value { width: 1fr; padding-left: 1; }
    """

    def __init__(self, label: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.value: float | None = None

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="gauge-name")
        yield ProgressBar(total=1, show_eta=False, show_percentage=False)
        yield Label("-", classes="gauge-value")

    def update_value(self, value: float | None, scale: float | None, note: str) -> None:
        self.value = value
        bar = self.query_one(ProgressBar)
        if value is None or not scale:
            bar.update(total=1, progress=0)
            self.query_one(".gauge-value", Label).update("-")
            return
        bar.update(total=scale, progress=min(value, scale))
        over = " (over)" if value > scale else ""
        self.query_one(".gauge-value", Label).update(f"{value:.2f} GB {note}{over}")


class MemoryGauges(Vertical):
    """Shows a step event's memory readings; bars are scaled to the forecast peak when there is one."""

    DEFAULT_CSS = "MemoryGauges { height: auto; }"

    def compose(self) -> ComposeResult:
        for gid, label, _field in GAUGES:
            yield Gauge(label, id=f"gauge-{gid}")

    def show(self, readings: dict[str, float], forecast_gb: float | None) -> None:
        total = readings.get("sys_total_gb")
        for gid, _label, name in GAUGES:
            gauge = self.query_one(f"#gauge-{gid}", Gauge)
            if gid == "system" or not forecast_gb:
                gauge.update_value(readings.get(name), total, f"of {total:.1f} GB RAM" if total else "")
            else:
                gauge.update_value(readings.get(name), forecast_gb, f"of {forecast_gb:.2f} GB forecast")
