"""What the Data screen's list holds: the file loaded with what the list needs, which examples match the filter
and search, each row's cells (built when the row is first drawn) and the columns' widths (known without them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.style import Style
from rich.text import Text

from tunedeck.core.data import Dataset, Example, Problem, load
from tunedeck.core.label_edits import LabelEdits

from ..widgets.example_table import haystack, previews

if TYPE_CHECKING:
    from ..state import AppState


def token_counts(tokenizer: Any, examples: list[Example]) -> tuple[list[int], list[int]] | None:
    """Sequence and completion token counts per example, or None if the model's chat template fails on one
    (shown in the token view)."""
    from tunedeck.core.template import TemplateError, encode_example  # Jinja: imported with the first tokenizer

    try:
        encoded = [encode_example(tokenizer, ex) for ex in examples]
    except TemplateError:
        return None
    return [len(e.ids) for e in encoded], [e.completion_len for e in encoded]


LoadResult = tuple[Dataset, list[str], tuple[list[str], list[int]]]


def load_for_list(path: Path) -> LoadResult:
    """`path` loaded leniently, with each example's search text and prompt preview (in a worker thread, or as the
    screen mounts for a small file)."""
    ds = load(path, None, False)
    return ds, [haystack(ex) for ex in ds.examples], previews(ds.examples)


class ListRows:
    """The Data screen's list rows (a mixin of DataScreen, whose state it reads)."""

    dataset: Dataset | None
    edits: LabelEdits
    flags: dict[int, list[Problem]]
    filter: str
    query_text: str
    haystacks: list[str]
    previews: list[str]
    preview_widths: list[int]
    token_counts: list[int] | None
    columns: tuple[str, ...]
    state: AppState
    app: Any
    audit_cell: Callable[[int], Text]  # AuditMarks's, the screen's other mixin

    def label_of(self, ex: Example) -> bool:
        """The example's label with unsaved edits applied."""
        return self.edits.label(ex)

    def _matches(self, i: int) -> bool:
        ex = self.dataset.examples[i]
        f = self.filter
        if f == "desirable" and not self.label_of(ex) or f == "undesirable" and self.label_of(ex):
            return False
        if f == "flagged" and ex.line not in self.flags:
            return False
        if f == "over-length":
            limit = self.state.config.data.max_seq_len
            if self.token_counts is None or self.token_counts[i] <= limit:
                return False
        return not self.query_text or self.query_text in self.haystacks[i]

    def _label_cell(self, ex: Example) -> Text:
        """✓ / ✗, then ● if edited and ! if the line has a problem (in the theme's colours): 1, 3 or 5 cells."""
        colors = self.app.theme_variables
        label = self.label_of(ex)
        text = Text("✓" if label else "✗", style=Style(color=colors["success"] if label else colors["error"], bold=True))
        if ex.line in self.edits:
            text.append(" ●", style=Style(color=colors["warning"]))
        if ex.line in self.flags:
            text.append(" !", style=Style(color=colors["warning"], bold=True))
        return text

    def _row(self, i: int) -> list[Text]:
        """Example `i`'s cells in the shown columns (built when the list first draws the row)."""
        ex = self.dataset.examples[i]
        cells: list[Text] = []
        for c in self.columns:
            if c == "label":
                cells.append(self._label_cell(ex))
            elif c == "audit":
                cells.append(self.audit_cell(ex.line))
            elif c == "prompt":
                cells.append(Text(self.previews[i], no_wrap=True))
            else:
                number = i + 1 if c == "n" else ex.turns if c == "turns" else self._tokens(i)
                cells.append(Text(str(number), justify="right", no_wrap=True))
        return cells

    def _tokens(self, i: int) -> int | str:
        return "-" if self.token_counts is None else self.token_counts[i]

    def _widths(self, visible: list[int]) -> list[int]:
        """The widest cell of each shown column among the rows `visible`, from the data (no cell is built)."""
        examples, edited = self.dataset.examples, set(self.edits)
        widths = {"n": len(str(max(visible, default=0) + 1)),
                  "turns": max((len(str(examples[i].turns)) for i in visible), default=0),
                  "tokens": max((len(str(self._tokens(i))) for i in visible), default=0),
                  "prompt": max((self.preview_widths[i] for i in visible), default=0),
                  "label": max((1 + 2 * (examples[i].line in edited) + 2 * (examples[i].line in self.flags)
                                for i in visible), default=0)}
        if "audit" in self.columns:
            widths["audit"] = max((self.audit_cell(examples[i].line).cell_len for i in visible), default=0)
        return [widths[c] for c in self.columns]
