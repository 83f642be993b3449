"""Desirable / undesirable counts and percentages, over a bar split in proportion."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget


class SplitBar(Widget):
    """Two lines: the counts as numbers (with percentages), then the proportional bar."""

    DEFAULT_CSS = """
    SplitBar { height: 2; padding: 0 1; }
    """
    counts: reactive[tuple[int, int]] = reactive((0, 0), layout=False)

    def render(self) -> Content:
        d, u = self.counts
        total = d + u
        pd, pu = (100 * d / total, 100 * u / total) if total else (0.0, 0.0)
        width = max(self.content_size.width, 1)
        nd = round(width * d / total) if total else 0
        bar = (("█" * nd, "$success"), ("░" * (width - nd), "$error")) if total else (("░" * width, "$text-disabled"),)
        return Content.assemble(
            ("desirable ", "$text-success"), (f"{d} ({pd:.1f}%)", "bold"),
            " │ ",
            ("undesirable ", "$text-error"), (f"{u} ({pu:.1f}%)", "bold"),
            (f"  of {total}", "$text-muted"),
            "\n",
            *bar,
        )
