"""Dataset statistics: counts, turns, lengths (with a histogram), duplicates, KTO weight advice."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static
from textual_plotext import PlotextPlot

from ..safe import plain


class StatsPanel(VerticalScroll):
    """Numbers from `core.data.compute_stats` over a length histogram."""

    DEFAULT_CSS = """
    StatsPanel { padding: 0 1; }
    StatsPanel > #stats-plot { height: 14; min-height: 8; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="stats-text")
        yield PlotextPlot(id="stats-plot")

    def show(self, stats: dict[str, Any], lengths: list[int], unit: str, weights_note: str | None) -> None:
        """`lengths` per example in `unit` ("tokens" or "characters", for the histogram); the percentiles are
        labelled by what `stats` holds (tokens once a tokenizer counted them); `weights_note` warns about the
        config's KTO weights (None when they are fine)."""
        t, w = stats["turns"], stats["suggested_kto_weights"]
        pct, pct_unit = (stats["tokens"], "tokens") if stats["tokens"] else (stats["chars"], "characters")
        lines: list[Content | tuple[str, str] | str] = [
            ("examples ", "$text-muted"), (str(stats["total"]), "bold"),
            (" · format ", "$text-muted"), plain(stats["format"]),
            (" · set aside ", "$text-muted"), str(stats["skipped"]), "\n",
            ("turns ", "$text-muted"), f"min {t['min']} · mean {t['mean']:.1f} · max {t['max']}\n",
            (f"length ({pct_unit}) ", "$text-muted"),
            f"p50 {pct['p50']} · p90 {pct['p90']} · p99 {pct['p99']} · max {pct['max']}\n",
        ]
        if stats["over_max_seq_len"] is not None:
            lines += [(f"over max_seq_len {stats['max_seq_len']} ", "$text-muted"),
                      f"{stats['over_max_seq_len']} examples, {stats['truncated_tokens']} prompt tokens cut, "
                      f"{stats['completion_too_long']} completions too long\n"]
        lines += [
            ("duplicates ", "$text-muted"), str(stats["duplicates"]),
            (" · label conflicts ", "$text-muted"), str(stats["label_conflicts"]),
            (" · errors ", "$text-muted"), (str(stats["errors"]), "$text-error" if stats["errors"] else ""),
            (" · warnings ", "$text-muted"), (str(stats["warnings"]), "$text-warning" if stats["warnings"] else ""),
            "\n",
            ("KTO weights for this balance ", "$text-muted"),
            (f"desirable_weight {w['desirable_weight']} · undesirable_weight {w['undesirable_weight']}", "bold"),
            " (w on the Config screen applies them)\n",
        ]
        if weights_note:
            lines.append(plain(f"config: {weights_note}\n", "$text-warning"))
        self.query_one("#stats-text", Static).update(Content.assemble(*lines))
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        if lengths:
            plt.hist(lengths, bins=min(40, max(5, len(set(lengths)))))
        plt.title(f"example length ({unit})")
        plot.refresh()
