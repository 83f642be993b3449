"""The memory forecast of a config: total against the budget, the parts, a verdict, suggestions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.content import Content

from tunedeck.core.forecast import Forecast

from ..safe import display, plain
from .quiet_static import QuietStatic

if TYPE_CHECKING:
    from ..state import AppState

#: core.forecast's note when no completion length was given, and what the panel says instead.
UPPER_BOUND_NOTE = "logits assumed at every position"
UPPER_BOUND_TEXT = ("logits assumed at every position of max_seq_len (an upper bound); the dataset's own lengths "
                    "are used once the Data screen has counted its tokens")
BUDGET_TEXT = "budget: the memory training may use on this machine"


def forecast_lengths(state: AppState, max_seq_len: int) -> dict[str, int]:
    """`seq_len` and `completion_len` for `core.forecast.forecast` from the loaded dataset's token counts (its
    longest sequence and completion, each at most `max_seq_len`), or {} before they are counted."""
    if not state.token_lengths or not state.token_lengths[0]:
        return {}
    seqs, completions = state.token_lengths
    return {"seq_len": min(max(seqs), max_seq_len), "completion_len": min(max(completions), max_seq_len)}


def _note(note: str) -> str:
    return UPPER_BOUND_TEXT if note.startswith(UPPER_BOUND_NOTE) else note


VERDICT_STYLE = {"fits": "bold $background on $success", "tight": "bold $background on $warning",
                 "won't fit": "bold $background on $error"}


class ForecastPanel(QuietStatic):
    """Renders a `core.forecast.Forecast` (or a message while there is none)."""

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
                (f"{fc.total_gb:.1f} GB", "bold"), (f" of {fc.budget_gb:.1f} GB budget ", "$text-muted"),
                Content.styled(f" {fc.verdict} ", VERDICT_STYLE.get(fc.verdict, "bold")), "\n",
                ("█" * filled, bar_style), ("░" * (width - filled), "$text-disabled"), "\n",
            ]
            for i, (name, gb) in enumerate(fc.parts.items()):
                parts += [(" · " if i else "", "$text-muted"), (display(name), "$text-muted"), f"\u00a0{gb:.2f}"]
            lengths = f"; sequences of {fc.seq_len} tokens, {fc.completion_len} trained" if fc.seq_len else ""
            parts += ["\n", (f"{BUDGET_TEXT}{lengths}\n", "$text-muted")]
        else:
            parts += [Content.styled(f" {fc.verdict} ", "bold"), (f" budget {fc.budget_gb:.1f} GB\n", "$text-muted")]
        for s in fc.suggestions:
            parts.append(plain(f"→ {s}\n", "$text-warning"))
        for note in fc.notes:
            parts.append(plain(f"· {_note(note)}\n", "$text-muted"))
        self.update(Content.assemble(*parts))
