"""Dataset statistics: counts, turns, lengths (with a histogram), duplicates, KTO weight advice."""

from __future__ import annotations

import asyncio
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from tunedeck.core.config import Config
from tunedeck.core.data import Dataset, check_kto_weights, compute_stats

from ..safe import plain


class StatsPanel(VerticalScroll):
    """Numbers from `core.data.compute_stats` over a length histogram (its plot built on the first `show`:
    plotext is not imported at start-up)."""

    DEFAULT_CSS = """
    StatsPanel { padding: 0 1; }
    StatsPanel > #stats-plot { height: 14; min-height: 8; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._key: tuple[tuple, tuple] = ((), ())  # what the panel shows (or is computing), to skip recomputing it

    def compose(self) -> ComposeResult:
        yield Static(id="stats-text")

    def show_dataset(self, ds: Dataset, tokenizer: Any, token_counts: list[int] | None, cfg: Config) -> None:
        """Show `ds`'s statistics (in tokens with a tokenizer, per example when `token_counts` are known) and the
        advice on `cfg`'s KTO weights; computed in a worker, and again only when one of them changed."""
        sources = (ds, tokenizer, token_counts)  # compared by identity
        settings = (cfg.data.max_seq_len, cfg.train.method, cfg.kto.desirable_weight, cfg.kto.undesirable_weight)
        old_sources, old_settings = self._key
        same_sources = len(old_sources) == len(sources) and all(
            a is b for a, b in zip(sources, old_sources, strict=True))
        if settings != old_settings or not same_sources:
            self._key = (sources, settings)
            self._compute(ds, tokenizer, token_counts, cfg)

    @work(exclusive=True, group="stats", description="stats")  # not the repr of its dataset argument
    async def _compute(self, ds: Dataset, tokenizer: Any, token_counts: list[int] | None, cfg: Config) -> None:
        stats = await asyncio.to_thread(compute_stats, ds, tokenizer, cfg.data.max_seq_len if tokenizer else None)
        if ds is not self._key[0][0]:  # another dataset was asked for meanwhile
            return
        if token_counts is not None:
            lengths, unit = token_counts, "tokens"
        else:
            lengths = [sum(len(m["content"]) for m in ex.prompt) + len(ex.completion) for ex in ds.examples]
            unit = "characters"
        note = None
        if cfg.train.method == "kto":
            note = check_kto_weights(ds.desirable, ds.undesirable, cfg.kto.desirable_weight, cfg.kto.undesirable_weight)
        self.show(stats, lengths, unit, note)

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
        from textual_plotext import PlotextPlot

        plot = next(iter(self.query(PlotextPlot)), None)
        if plot is None:
            plot = PlotextPlot(id="stats-plot")
            self.mount(plot)
        plt = plot.plt
        plt.clear_figure()
        if lengths:
            plt.hist(lengths, bins=min(40, max(5, len(set(lengths)))))
        plt.title(f"example length ({unit})")
        plot.refresh()
