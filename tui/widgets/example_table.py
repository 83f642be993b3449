"""The Data screen's example list: a DataTable whose cost is what it shows, not the file's size.

DataTable's `add_row` re-validates the cursor and marks the table for a new layout on every row, and on the next
idle it measures every cell of the new rows through a Rich console (about 0.4 ms a row here: 4-5 s for 10,000
examples, all of it blocking keys and the first frame). This table takes its rows as one list, each row's cells
built only when DataTable first reads them (when the row is drawn), and its column widths from the caller, who
knows them from the data; DataTable renders only the rows in view."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from rich.cells import cell_len
from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, Row, RowKey

from tunedeck.core.data import Example

from ..safe import display

PROMPT_WORDS = 48


def prompt_preview(ex: Example) -> str:
    """The start of the first non-system prompt turn (the completion for prompt-less examples)."""
    fallback = ex.prompt[0]["content"] if ex.prompt else ex.completion
    turn = next((m["content"] for m in ex.prompt if m["role"] != "system"), fallback)
    return " ".join(display(turn[: PROMPT_WORDS * 2]).split())[:PROMPT_WORDS]


def haystack(ex: Example) -> str:
    """What a search looks in: every turn and the completion, case-folded."""
    return "\n".join([*(m["content"] for m in ex.prompt), ex.completion]).casefold()


def previews(examples: Sequence[Example]) -> tuple[list[str], list[int]]:
    """Each example's prompt preview and its width in cells (computed with the load, off the event loop)."""
    texts = [prompt_preview(ex) for ex in examples]
    return texts, [cell_len(t) for t in texts]


class LazyCells(dict):
    """One row's cells by column key, built by `build` on the first read (DataTable reads the rows it draws)."""

    __slots__ = ("_build", "_keys")

    def __init__(self, keys: Sequence[ColumnKey], build: Callable[[], Sequence[Text]]) -> None:
        super().__init__()
        self._keys: Sequence[ColumnKey] = keys
        self._build: Callable[[], Sequence[Text]] | None = build

    def _filled(self) -> LazyCells:
        if self._build is not None:
            build, self._build = self._build, None
            dict.update(self, zip(self._keys, build()))
        return self

    def __missing__(self, key: Hashable) -> Text:
        if self._build is None:
            raise KeyError(key)
        return self._filled()[key]

    def get(self, key: Hashable, default: object = None) -> object:
        return dict.get(self._filled(), key, default)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self._filled(), key)

    def __iter__(self):
        return dict.__iter__(self._filled())

    def __len__(self) -> int:
        return dict.__len__(self._filled())

    def keys(self):
        return dict.keys(self._filled())

    def values(self):
        return dict.values(self._filled())

    def items(self):
        return dict.items(self._filled())

    def __setitem__(self, key: Hashable, value: object) -> None:
        dict.__setitem__(self._filled(), key, value)

    def __delitem__(self, key: Hashable) -> None:
        dict.__delitem__(self._filled(), key)


class ExampleTable(DataTable):
    """A DataTable whose rows are set all at once by `set_rows` (one-line cells, built when first drawn)."""

    def set_rows(self, rows: Sequence[tuple[str, Callable[[], Sequence[Text]]]], widths: Sequence[int]) -> None:
        """Replace every row by `rows` (key, a function giving its cells in column order) whose widest cells are
        `widths` cells wide, per column; the cursor back at the top, as after `clear`. Columns keep the widths they
        had (as with `clear` and `add_row`) or grow to their widest new cell."""
        self.clear()
        columns = self.ordered_columns
        keys = [column.key for column in columns]
        locations: dict[RowKey, int] = {}
        for index, (key, build) in enumerate(rows):
            row_key = RowKey(key)
            locations[row_key] = index
            self._data[row_key] = LazyCells(keys, build)
            self.rows[row_key] = Row(row_key, 1)
        self._row_locations = TwoWayDict(locations)
        for column, width in zip(columns, widths):
            column.content_width = max(column.content_width, width)
        self._require_update_dimensions = True  # the virtual size, on the next idle (no cell is measured there)
        self._update_count += 1
        if rows and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()  # as add_row does for the first row: RowHighlighted for row 0
        self.check_idle()

    def keep_in_view(self, row: int) -> None:
        """Scroll `row` to the middle of the list when it has left the view: the list then moves once every half
        page, not on every key past its edge (each scroll redraws every row shown: tens of ms on a slow machine)."""
        shown = max(1, self.scrollable_content_region.height - self.header_height)
        top = round(self.scroll_y)
        if not top <= row < top + shown:
            self.scroll_to(y=max(0, row - shown // 2), animate=False, immediate=True)
