"""The memory forecast of a config: total against the budget, the parts, a verdict, suggestions."""

from __future__ import annotations

from textual.content import Content

from tunedeck.core.memory import Forecast

from ..safe import display, plain
from .quiet_static import QuietStatic

VERDICT_STYLE = {"fits": "bold $background on $success", "tight": "bold $background on $warning",
                 "won't fit": "bold $background on $error"}


class ForecastPanel(QuietStatic):
    """Renders a `core.memory.Forecast` (or a message while there is none)."""

    DEFAULT_CSS = """
    ForecastPanel { height: auto; padding: 0 1; }
    """

    def show_message(self, text: str) -> None:
        self.update(plain(text, "$text-muted"))

    def show(self, fc: Forecast) -> None:
        """Total against the budget (with a bar), the parts in GB, the verdict, suggestions and notes."""
        parts: list[Content | tuple[str, str] | str] = []
        if fc.parts:
            width = max(self.content_size.width - 2, 10)
            ratio = fc.total_gb / fc.budget_gb if fc.budget_gb > 0 else 1.0
            filled = min(width, round(width * ratio))
            bar_style = "$error" if ratio > 1 else "$warning" if fc.verdict == "tight" else "$success"
            parts += [
                (f"{fc.total_gb:.1f} GB", "bold"), (f" of {fc.budget_gb:.1f} GB ", "$text-muted"),
                Content.styled(f" {fc.verdict} ", VERDICT_STYLE.get(fc.verdict, "bold")), "\n",
                ("█" * filled, bar_style), ("░" * (width - filled), "$text-disabled"), "\n",
            ]
            for i, (name, gb) in enumerate(fc.parts.items()):
                parts += [(" · " if i else "", "$text-muted"), (display(name), "$text-muted"), f"\u00a0{gb:.2f}"]
            parts.append("\n")
        else:
            parts += [Content.styled(f" {fc.verdict} ", "bold"), (f" budget {fc.budget_gb:.1f} GB\n", "$text-muted")]
        for s in fc.suggestions:
            parts.append(plain(f"→ {s}\n", "$text-warning"))
        for note in fc.notes:
            parts.append(plain(f"· {note}\n", "$text-muted"))
        self.update(Content.assemble(*parts))
