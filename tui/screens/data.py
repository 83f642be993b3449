"""The Data screen: browse a dataset one example at a time, fix labels, inspect tokens, stats, problems."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.coordinate import Coordinate
from textual.events import Resize, ScreenResume
from textual.timer import Timer
from textual.widgets import ContentSwitcher, DataTable, Header, Input, Static

from tunedeck.core.data import DataError, Dataset, Problem
from tunedeck.core.label_edits import LabelEdits
from tunedeck.core.labels import LabelConflict

from ..safe import display, plain
from ..state import ModelStatus
from ..widgets.audit_marks import AUDIT_BINDINGS, AUDIT_COLUMN, AuditMarks
from ..widgets.example_table import ExampleTable
from ..widgets.example_view import ExampleView
from ..widgets.key_footer import KeyFooter
from ..widgets.problems_list import ProblemsList
from ..widgets.split_bar import SplitBar
from ..widgets.stats_panel import StatsPanel
from ..widgets.token_view import TokenView
from .base import TunedeckScreen
from .data_list import ListRows, LoadResult, load_for_list, token_counts

FILTERS = ("all", "desirable", "undesirable", "flagged", "over-length")
COLUMNS = (("#", "n"), ("label", "label"), AUDIT_COLUMN, ("turns", "turns"), ("tokens", "tokens"), ("prompt", "prompt"))
NARROW_COLUMNS = ("n", "label", "audit", "tokens", "prompt")  # under WIDE cells: the prompt keeps the room
WIDE = 110
MOVE = Binding.Group("move", compact=True)
SEARCH_DELAY = 0.15  # seconds
LOAD_AT_MOUNT_BYTES = 1 << 20  # loaded before the first frame up to this size (1,000 examples: 0.65 MB, ~0.1 s)


def _load_or_error(path: Path) -> LoadResult | DataError:
    """load_for_list(path), or the DataError it raised (so a worker thread hands it back to the screen)."""
    try:
        return load_for_list(path)
    except DataError as e:
        return e


class DataScreen(ListRows, AuditMarks, TunedeckScreen):
    """Dataset browser: split counts, a filterable example list and one example (or tokens/stats/problems)."""

    CSS_PATH = "data.tcss"
    AUTO_FOCUS = "#examples"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (76, "-wide")]
    BINDINGS = [
        Binding("j", "move(1)", "Next", id="data.next", tooltip="Next example", group=MOVE),
        Binding("k", "move(-1)", "Previous", id="data.previous", tooltip="Previous example", group=MOVE),
        Binding("down", "move(1)", "Next", show=False, id="data.next_arrow", tooltip="Next example"),
        Binding("up", "move(-1)", "Previous", show=False, id="data.previous_arrow", tooltip="Previous example"),
        Binding("space", "toggle_label", "Label", id="data.toggle_label",
                tooltip="Toggle desirable/undesirable of this example"),
        Binding("u", "undo", "Undo", show=False, id="data.undo", tooltip="Undo the last label toggle"),
        Binding("ctrl+s", "save", "Save", id="data.save",
                tooltip="Write label edits to the file (atomic, with a backup)"),
        Binding("r", "reload", "Reload", show=False, id="data.reload",
                tooltip="Reload the file (edits to unchanged lines are kept)"),
        Binding("f", "cycle_filter", "Filter", show=False, id="data.filter",
                tooltip="Cycle: all, desirable, undesirable, flagged, over-length"),
        Binding("slash", "search", "Search", key_display="/", show=False, id="data.search",
                tooltip="Filter examples by text as you type"),
        Binding("t", "pane('tokens')", "Tokens", id="data.tokens",
                tooltip="Show the example token by token (trained tokens highlighted)"),
        Binding("s", "pane('stats')", "Stats", show=False, id="data.stats",
                tooltip="Length histogram, turns, duplicates, KTO weights"),
        Binding("p", "pane('problems')", "Problems", show=False, id="data.problems",
                tooltip="Validation problems (enter jumps to the example)"),
        Binding("escape", "back", "Back", show=False, id="data.back",
                tooltip="Close the search or go back to the example"),
        *AUDIT_BINDINGS,
    ]

    PALETTE = [(f"Filter {name}", f"Show {'every example' if name == 'all' else f'the {name} examples'} (f cycles)",
                f"set_filter('{name}')") for name in FILTERS]

    def __init__(self) -> None:
        super().__init__()
        self.dataset: Dataset | None = None
        self.loaded_path: Path | None = None
        self.edits = LabelEdits()  # file line -> new label, for the lines whose label the user changed
        self.filter = "all"
        self.query_text = ""
        self.current: int | None = None  # index into dataset.examples
        self.flags: dict[int, list[Problem]] = {}
        self.haystacks: list[str] = []
        self.previews: list[str] = []  # per example: the start of its prompt, for the list
        self.preview_widths: list[int] = []
        self.token_counts: list[int] | None = None
        self.pane = "example"
        self.load_error = ""
        self._search_timer: Timer | None = None
        self.columns: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield Header()
        yield SplitBar(id="split")
        with Horizontal(id="toolbar"):
            yield Static(id="status")
            yield Input(placeholder="search prompt and completion", id="search")
        with Horizontal(id="main"):
            yield ExampleTable(id="examples", cursor_type="row", zebra_stripes=True)
            with ContentSwitcher(id="pane", initial="example"):
                yield ExampleView(id="example")
                yield TokenView(id="tokens")
                yield StatsPanel(id="stats")
                yield ProblemsList(id="problems")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._set_columns(self.app.size.width)
        self.watch(self.app, "model_status", self._model_status_changed, init=False)
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._rebuild_rows())
        path = self.state.data_path
        try:
            small = path.stat().st_size <= LOAD_AT_MOUNT_BYTES
        except OSError:  # missing or unreadable: the worker says so
            small = False
        if small:  # in the screen's first frame, not a frame and a layout later (and no thread sharing the GIL)
            self._load_now(path)
        else:
            self.load_dataset(path)

    def on_resize(self, event: Resize) -> None:
        if self._set_columns(event.size.width):
            self._rebuild_rows()

    def _set_columns(self, width: int) -> bool:
        """Every column from WIDE cells on, else all but turns; whether they changed."""
        columns = self.audit_columns(tuple(k for _, k in COLUMNS) if width >= WIDE else NARROW_COLUMNS)
        if columns == self.columns:
            return False
        self.columns = columns
        table = self.query_one(DataTable)
        table.clear(columns=True)
        for label, key in COLUMNS:
            if key in columns:
                table.add_column(label, key=key)
        return True

    def on_screen_resume(self, _event: ScreenResume) -> None:
        """The config may point at another dataset or max_seq_len now."""
        path = self.state.data_path
        if self.loaded_path is not None and path != self.loaded_path:
            if self.edits:
                self.notify(display(f"The config now points at {path.name}; save (ctrl+s) or undo the label edits "
                                    f"of {self.loaded_path.name} first, then press r."), severity="warning", markup=False)
            else:
                self.load_dataset(path)
                return
        if self.filter == "over-length":
            self._rebuild_rows()
        self._show_pane()

    # ---------------------------------------------------------------- loading

    @work(exclusive=True, group="dataset")
    async def load_dataset(self, path: Path) -> None:
        """Load `path` leniently (bad lines become problems), keeping edits to unchanged lines."""
        self._set_status(f"loading {path.name}…")
        self._show_loaded(path, await asyncio.to_thread(_load_or_error, path))

    def _load_now(self, path: Path) -> None:
        """Load `path` on the event loop: a small file, before the screen's first frame."""
        self._show_loaded(path, _load_or_error(path))

    def _show_loaded(self, path: Path, loaded: LoadResult | DataError) -> None:
        if isinstance(loaded, DataError):
            self._load_failed(path, loaded)
            return
        ds, self.haystacks, (self.previews, self.preview_widths) = loaded
        self._loaded(ds)

    def _load_failed(self, path: Path, error: DataError) -> None:
        self.dataset, self.loaded_path, self.current = None, path, None
        self.tapp.update_state(dataset=None, token_lengths=None)
        self.load_error = "\n".join(f"{p.message}" for p in error.problems)
        self.query_one(SplitBar).counts = (0, 0)
        self.query_one(DataTable).clear()
        self.query_one(ExampleView).show_message(f"Cannot open {path}:\n{self.load_error}")
        self.notify(display(f"Cannot open {path.name}: {self.load_error}"), severity="error", markup=False)
        self._set_status(f"cannot open {path.name}")

    def _loaded(self, ds: Dataset) -> None:
        dropped = self.edits.reload(ds)
        current_line = self.dataset.examples[self.current].line if self.dataset and self.current is not None else None
        self.dataset, self.loaded_path, self.load_error = ds, ds.path, ""
        self.tapp.update_state(dataset=ds, token_lengths=None)
        self.flags = defaultdict(list)
        for p in ds.problems:
            self.flags[p.line].append(p)
        self.token_counts = None
        self.current = next((i for i, ex in enumerate(ds.examples) if ex.line == current_line), 0 if ds.examples else None)
        if dropped:
            self.notify(f"{dropped} label edits were dropped: their lines changed on disk.", severity="warning")
        self._edits_changed()
        self._rebuild_rows()
        self.look_up_audit(ds)
        self.query_one(ProblemsList).show(ds.problems)
        status = self.tapp.model_status
        if status.state == "ready":
            self._count_tokens(status.tokenizer)
        if not ds.examples:
            self.query_one(ExampleView).show_message(f"{ds.path.name} has no usable examples; see the problems (p).")

    @work(exclusive=True, group="tokens", description="count tokens")  # not the repr of its tokenizer
    async def _count_tokens(self, tokenizer: Any) -> None:
        if self.dataset is None:
            return
        ds = self.dataset
        counts = await asyncio.to_thread(token_counts, tokenizer, ds.examples)
        if ds is self.dataset:
            self.token_counts = counts[0] if counts else None
            self.tapp.update_state(token_lengths=counts)
            self._rebuild_rows()

    def _model_status_changed(self, status: ModelStatus) -> None:
        if status.state == "ready" and self.dataset is not None:
            self._count_tokens(status.tokenizer)
        elif status.state == "idle" and self.token_counts is not None:  # (not the watcher's first call, at load)
            self.token_counts = None
            self.tapp.update_state(token_lengths=None)
            self._rebuild_rows()
        self._show_pane()

    # ---------------------------------------------------------------- the list

    def _rebuild_rows(self) -> None:
        table = self.query_one(ExampleTable)
        if self.dataset is None:
            table.clear()
            return
        visible = self.audit_order([i for i in range(len(self.dataset.examples)) if self._matches(i)])
        table.set_rows([(str(i), partial(self._row, i)) for i in visible], self._widths(visible))
        if self.current in visible:
            table.move_cursor(row=visible.index(self.current), animate=False)
            if self.state.current_example is not self.dataset.examples[self.current]:  # a (re)loaded file's object,
                self.tapp.update_state(current_example=self.dataset.examples[self.current])  # not at the next highlight
        elif visible:
            self._select(visible[0])
        else:
            self.current = None
            self.tapp.update_state(current_example=None)
        self._set_status()
        self._show_pane()

    def _set_status(self, message: str | None = None) -> None:
        if message is None:
            shown = self.query_one(DataTable).row_count
            total = len(self.dataset.examples) if self.dataset else 0
            parts: list[Content | tuple[str, str] | str] = []
            if self.edits:  # first: it matters most, and stays visible when the line wraps
                n = len(self.edits)
                parts.append((f"{n} unsaved label edit{'s' if n != 1 else ''} · ", "bold $text-warning"))
            parts += [f"{shown} of {total} · filter ", (self.filter, "bold"), " (f) or"]
            for name in FILTERS:  # every other filter a click away
                if name != self.filter:
                    parts += [" ", Content.from_markup(f"[underline @click=screen.set_filter('{name}')]{name}[/]")]
            if self.filter == "over-length" and self.token_counts is None:
                parts.append(" (needs the tokenizer: loading…)")
            parts += self.audit_parts()
            parts.append(plain(f" · search “{self.query_text}” (/)") if self.query_text else " · search (/)")
            if self.dataset is not None and self.dataset.skipped:
                parts.append((f" · {self.dataset.skipped} set aside (p)", "bold $text-warning"))
            self.query_one("#status", Static).update(Content.assemble(*parts))
            return
        self.query_one("#status", Static).update(plain(message))

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is None or self.dataset is None:
            return
        i = int(event.row_key.value)
        if i != self.current:
            self._select(i)
        elif self.state.current_example is not self.dataset.examples[i]:  # shown already (j/k, a rebuilt list)
            self.tapp.update_state(current_example=self.dataset.examples[i])

    def _select(self, i: int) -> None:
        self.current = i
        self.tapp.update_state(current_example=self.dataset.examples[i])
        self._show_pane()

    # ---------------------------------------------------------------- the pane

    def _show_pane(self) -> None:
        self.query_one(ContentSwitcher).current = self.pane
        if self.pane == "example":
            self._show_example()
        elif self.pane == "tokens":
            self._show_tokens()
        elif self.pane == "stats":
            self._show_stats()

    def _show_example(self) -> None:
        view = self.query_one(ExampleView)
        if self.dataset is None:
            view.show_message(f"Cannot open {self.loaded_path}:\n{self.load_error}" if self.load_error else "Loading…")
        elif self.current is None:
            view.show_message("No examples match this filter and search.")
        else:
            ex = self.dataset.examples[self.current]
            view.show(ex, self.current, self.label_of(ex), ex.line in self.edits, self.flags.get(ex.line, []),
                      find=self.query_text)

    def _show_tokens(self) -> None:
        view = self.query_one(TokenView)
        status = self.tapp.model_status
        if status.state == "failed":
            view.show_message(f"No tokenizer for {status.model}: {status.message}")
        elif status.state != "ready":
            view.show_message(f"tokenizer: {status.message or 'starting'}", busy=True)
            self.tapp.request_tokenizer()
        elif self.dataset is None or self.current is None:
            view.show_message("No example selected.")
        else:
            cfg = self.state.config
            view.show(self.dataset.examples[self.current], status.tokenizer, cfg.data.max_seq_len,
                      cfg.data.train_on if cfg.train.method == "sft" else "last")

    def _show_stats(self) -> None:
        if self.dataset is None:
            return
        status = self.tapp.model_status
        if status.state not in ("ready", "failed"):
            self.tapp.request_tokenizer()
        tokenizer = status.tokenizer if status.state == "ready" else None
        self.query_one(StatsPanel).show_dataset(self.dataset, tokenizer, self.token_counts, self.state.config)

    def action_pane(self, name: str) -> None:
        self.pane = "example" if self.pane == name else name
        self._show_pane()
        if self.pane == "problems":
            self.query_one(ProblemsList).focus()
        else:
            self.query_one(DataTable).focus()

    @on(ProblemsList.Jump)
    def _jump(self, event: ProblemsList.Jump) -> None:
        if self.dataset is None:
            return
        i = next((i for i, ex in enumerate(self.dataset.examples) if ex.line == event.line), None)
        if i is None:
            self.notify(f"Line {event.line} was set aside: it has no example to show.", severity="warning")
            return
        self.filter, self.query_text = "all", ""
        self.query_one("#search", Input).value = ""
        self.current, self.pane = i, "example"
        self._rebuild_rows()
        self.query_one(DataTable).focus()

    # ---------------------------------------------------------------- actions

    def action_move(self, delta: int) -> None:
        """The next/previous example: shown in the pane at once, in the same frame as the cursor's move (the
        table's RowHighlighted would come a frame later; for the example already shown it changes nothing)."""
        table = self.query_one(ExampleTable)
        if table.row_count:
            row = max(0, min(table.row_count - 1, table.cursor_row + delta))
            key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
            if key is not None and int(key) != self.current:
                self._select(int(key))
            table.keep_in_view(row)  # first: the cursor's own watcher scrolls it into view by the least
            table.move_cursor(row=row, animate=False, scroll=False)

    def action_cycle_filter(self) -> None:
        self.action_set_filter(FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)])

    def action_set_filter(self, name: str) -> None:
        """Show the examples of filter `name` (the cursor stays on the current example when it still shows)."""
        if name not in FILTERS:
            return
        self.filter = name
        if self.filter == "over-length" and self.token_counts is None:
            self.tapp.request_tokenizer()
        self._rebuild_rows()

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.display = True
        search.focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        """Filter as the user types (after a short pause, so fast typing rebuilds the list once)."""
        self.query_text = event.value.casefold()
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY, self._search_settled)

    def _search_settled(self) -> None:
        """The list of matches, the current example's matches highlighted (when it still matches, it stays)."""
        before = self.current
        self._rebuild_rows()
        if self.current == before:
            self._show_pane()

    @on(Input.Submitted, "#search")
    def _search_submitted(self) -> None:
        self.query_one("#search", Input).display = False
        self.query_one(DataTable).focus()

    def action_back(self) -> None:
        """Close the search and clear it (also after enter left it on), else go back to the example."""
        search = self.query_one("#search", Input)
        if search.display or self.query_text:
            search.display = False
            search.value = ""
            self.query_one(DataTable).focus()
        elif self.pane != "example":
            self.action_pane(self.pane)

    def action_next_suspect(self, by: int = 1) -> None:
        """n / N: the next / previous example that matches the search while there is one, else the audit's
        next / previous suspect."""
        if not self.query_text:
            self.next_suspect(by)
            return
        table = self.query_one(DataTable)
        if not table.row_count:
            self.notify(display(f"No example matches “{self.query_text}”."), markup=False)
            return
        table.move_cursor(row=(table.cursor_row + by) % table.row_count, animate=False)

    def action_toggle_label(self) -> None:
        if self.dataset is None or self.current is None:
            return
        if not self.edits.editable:
            self.notify("Label edits need a JSONL file (this is a .json list).", severity="warning")
            return
        self.edits.toggle(self.dataset.examples[self.current])
        self._label_changed(self.current)

    def action_undo(self) -> None:
        if self.dataset is None or (ex := self.edits.undo()) is None:
            self.notify("Nothing to undo.")
            return
        self._label_changed(next(i for i, e in enumerate(self.dataset.examples) if e.line == ex.line))

    def _label_changed(self, i: int) -> None:
        """Show example `i`'s new label: its row, the split, the status line, the pane if it is shown."""
        table = self.query_one(DataTable)
        if str(i) in table.rows:
            table.update_cell(str(i), "label", self._label_cell(self.dataset.examples[i]))
        self._edits_changed()
        self._set_status()
        if i == self.current:
            self._show_pane()

    def _edits_changed(self) -> None:
        self.query_one(SplitBar).counts = self.edits.counts() if self.dataset else (0, 0)
        self.set_unsaved("data", bool(self.edits))

    async def action_save(self) -> None:
        if not self.edits:
            self.notify("No label edits to save.")
            return
        await self.save_changes()

    async def save_changes(self) -> bool:
        """Write the label edits (atomically, with a backup); False if they could not be saved."""
        if not self.edits or self.edits.dataset is None:
            return True
        path, n = self.edits.dataset.path, len(self.edits)
        try:
            backup = await asyncio.to_thread(self.edits.save)
        except LabelConflict as e:
            self.notify(display(f"Not saved: {e}. Your {n} label edits are kept: press r to reload the file "
                                "(edits to unchanged lines are re-applied), then ctrl+s."),
                        title="File changed on disk", severity="error", timeout=15, markup=False)
            return False
        except (OSError, ValueError) as e:
            self.notify(display(f"Not saved: {e}"), severity="error", timeout=15, markup=False)
            return False
        self._edits_changed()
        self._rebuild_rows()
        where = backup.name if backup.parent == path.parent.resolve() else backup  # beside a symlink's target
        self.notify(display(f"Saved {n} label edit{'s' if n != 1 else ''} to {path.name} (backup {where})."),
                    markup=False)
        self.load_dataset(path)
        return True

    def action_reload(self) -> None:
        self.load_dataset(self.state.data_path)
