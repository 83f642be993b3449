"""Memory gauges: process, MLX active/peak and system memory against the forecast (or the machine), and the
machine's budget (the number the Config screen's forecast is measured against). `#gauges-line` holds every
reading on one line, for a narrow layout to show instead of the four gauges."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Label, ProgressBar

from .quiet_static import QuietStatic

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
    Gauge > .gauge-name { width: 11; }
    Gauge > ProgressBar { width: auto; }
    Gauge > ProgressBar > Bar { width: 12; }
    Gauge > .gauge-value { width: 1fr; padding-left: 1; }
    """

    def __init__(self, label: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.value: float | None = None
        self.text = "-"

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="gauge-name")
        yield ProgressBar(total=1, show_eta=False, show_percentage=False)
        yield Label("-", classes="gauge-value")

    def update_value(self, value: float | None, scale: float | None, note: str) -> None:
        self.value = value
        bar = self.query_one(ProgressBar)
        if value is None or not scale:
            bar.update(total=1, progress=0)
            self.text = "-"
        else:
            bar.update(total=scale, progress=min(value, scale))
            over = " (over)" if value > scale else ""
            self.text = f"{value:.2f} GB {note}{over}"
        self.query_one(".gauge-value", Label).update(self.text)


class MemoryGauges(Vertical):
    """Shows a step event's memory readings; bars are scaled to the forecast peak when there is one."""

    DEFAULT_CSS = """
    MemoryGauges { height: auto; }
    MemoryGauges > #gauges-line { display: none; height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self._shown: tuple[dict[str, float], float | None, float | None, float | None] = ({}, None, None, None)

    def compose(self) -> ComposeResult:
        for gid, label, _field in GAUGES:
            yield Gauge(label, id=f"gauge-{gid}")
        yield QuietStatic(id="gauges-line")

    def show(self, readings: dict[str, float], forecast_gb: float | None, budget_gb: float | None = None) -> None:
        """Update the gauges; the title names the budget (what training may use on this machine)."""
        total = readings.get("sys_total_gb")
        for gid, _label, name in GAUGES:
            gauge = self.query_one(f"#gauge-{gid}", Gauge)
            if gid == "system" or not forecast_gb:
                gauge.update_value(readings.get(name), total, f"of {total:.1f} GB RAM" if total else "")
            else:
                gauge.update_value(readings.get(name), forecast_gb, f"of {forecast_gb:.2f} GB forecast")
        self.border_title = "memory" + (f" · budget {budget_gb:.1f} GB" if budget_gb else "")
        self._shown = (dict(readings), forecast_gb, total, budget_gb)
        self._show_line()

    def on_resize(self) -> None:
        self._show_line()

    def _show_line(self) -> None:
        """The one-line form, as much of it as fits the line's width (whole parts, the least useful left out)."""
        line = self.query_one("#gauges-line", QuietStatic)
        width = line.content_region.width or self.content_region.width
        parts = self._parts(*self._shown)
        for drop in ((), ("mlx",), ("mlx", "budget"), ("mlx", "budget", "system")):
            shown = [part for key, part in parts if key not in drop]
            if not width or sum(p.cell_length for p in shown) <= width:
                break
        line.update(Content.assemble(*shown))

    @staticmethod
    def _parts(readings: dict[str, float], forecast_gb: float | None, total: float | None,
               budget_gb: float | None) -> list[tuple[str, Content]]:
        """Every reading, each a (key, part) of `mem process 0.30 · MLX 0.25 · peak 0.46 of 0.43 GB forecast ·
        system 12.0/32.0 GB RAM · budget 24.0`."""

        def gb(name: str) -> str:
            v = readings.get(name)
            return "-" if v is None else f"{v:.2f}"

        peak = readings.get("peak_memory_gb")
        over = forecast_gb is not None and peak is not None and peak > forecast_gb
        parts = [
            ("process", Content.assemble(("mem ", "bold"), ("process ", "$text-muted"), gb("rss_gb"))),
            ("mlx", Content.assemble((" · MLX ", "$text-muted"), gb("mlx_active_gb"))),
            ("peak", Content.assemble((" · peak ", "$text-muted"), (gb("peak_memory_gb"), "$text-error" if over else ""),
                                      (f" of {forecast_gb:.2f} GB forecast" if forecast_gb else " GB", "$text-muted"))),
            ("system", Content.assemble((" · system ", "$text-muted"), gb("sys_used_gb"),
                                        (f"/{total:.1f} GB RAM" if total else " GB", "$text-muted"))),
        ]
        if budget_gb:
            parts.append(("budget", Content.styled(f" · budget {budget_gb:.1f} GB", "$text-muted")))
        return parts
