"""The Runs screen: every run in the workspace, to attach to, resume, delete, or mark and compare."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Static

from tunedeck.core import checkpoint_files, runs
from tunedeck.core.orchestrate import resume_run
from tunedeck.core.progress import fmt_duration

from ..messages import RunsListed
from ..safe import display, plain
from ..widgets.key_footer import KeyFooter
from ..widgets.run_confirm import ConfirmRun
from ..widgets.train_history import fmt_number
from .base import TunedeckScreen
from .compare import MAX_RUNS, CompareScreen
from .train import RESUMABLE

COLUMNS = ("run", "status", "method", "steps", "last val", "best val", "started", "duration")
NARROW_COLUMNS = ("run", "status", "method", "steps", "best val", "duration")  # under WIDE columns
WIDE = 110
DELETABLE = ("finished", "stopped", "failed", "stale", "new")
MARK = "✓"  # the row label of a run marked for comparison


class RunsScreen(TunedeckScreen):
    CSS_PATH = "runs.tcss"
    BINDINGS = [
        Binding("enter", "attach", "Attach", id="runs.attach", tooltip="Watch this run on the Train screen"),
        Binding("r", "resume", "Resume", id="runs.resume",
                tooltip="Resume a stopped, failed or stale run from its latest verified checkpoint"),
        Binding("d", "delete", "Delete", id="runs.delete", tooltip="Delete a run that is not training (asks first)"),
        Binding("f5", "refresh", "Refresh", id="runs.refresh", tooltip="Read the runs again now"),
        Binding("space", "mark", "Mark", id="runs.mark", tooltip="Mark or unmark this run for comparison (c)"),
        Binding("c", "compare", "Compare", id="runs.compare",
                tooltip="Overlay the marked runs' curves and list the config keys that differ"),
    ]
    FOOTER_DROP = ("runs.refresh", "runs.delete")  # left out of a narrow footer first (the list refreshes itself)

    def __init__(self) -> None:
        super().__init__()
        self.infos: dict[str, runs.RunInfo] = {}
        self.columns: tuple[str, ...] = ()
        self.marked: list[str] = []  # the marked runs' directories, in the order they were marked
        self._cache: runs.RunsCache = {}
        self._checkpoints: dict[tuple[str, object], Path | None] = {}  # (run, its events' time) -> newest verified

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="runs-root")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static(id="runs-detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._set_columns(self.app.size.width)
        self.query_one("#runs-root", Static).update(plain(f"Runs in {self.state.runs_root}"))
        self.set_interval(2.0, self._tick)

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def on_resize(self, event: events.Resize) -> None:
        if self._set_columns(event.size.width):
            self.action_refresh()

    def _set_columns(self, width: int) -> bool:
        """Every column from WIDE cells on, else the most useful ones; whether they changed."""
        columns = COLUMNS if width >= WIDE else NARROW_COLUMNS
        if columns == self.columns:
            return False
        self.columns = columns
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns(*columns)
        return True

    # --- listing -----------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self._scan(self.state.runs_root)

    def _tick(self) -> None:
        if self.is_current:
            self.action_refresh()

    @work(thread=True, exclusive=True, group="scan")
    def _scan(self, root: Path) -> None:
        """RunInfo for every run, newest first; a run's events are re-read only when they changed."""
        self.post_message(RunsListed(runs.list_runs(root, self._cache)[::-1]))

    def on_runs_listed(self, message: RunsListed) -> None:
        self._fill(message.infos)

    def _fill(self, infos: list[runs.RunInfo]) -> None:
        """The table's rows (a mark as the row label of each marked run), keeping the cursor on its run."""
        table = self.query_one(DataTable)
        selected = self.selected
        self.infos = {str(i.run_dir): i for i in infos}
        self.marked = [k for k in self.marked if k in self.infos]
        table.clear()
        for info in infos:
            cells = dict(zip(COLUMNS, self._cells(info), strict=True))
            key = str(info.run_dir)
            table.add_row(*(cells[c] for c in self.columns), key=key, label=Text(MARK if key in self.marked else " "))
        if selected is not None and str(selected.run_dir) in self.infos:
            table.move_cursor(row=table.get_row_index(str(selected.run_dir)), animate=False)
        self._show_detail()

    @staticmethod
    def _cells(i: runs.RunInfo) -> list[Text]:
        end = time.time() if i.status == "running" else i.updated
        cells = [
            i.run_dir.name, i.status, i.method or "-", f"{i.step}/{i.total_steps}" if i.total_steps else str(i.step),
            fmt_number(i.last_val_loss), fmt_number(i.best_val_loss),
            datetime.fromtimestamp(i.started).strftime("%Y-%m-%d %H:%M") if i.started else "-",
            fmt_duration(end - i.started) if i.started and end else "-",
        ]
        return [Text(display(c)) for c in cells]

    @property
    def selected(self) -> runs.RunInfo | None:
        table = self.query_one(DataTable)
        if not self.infos or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.infos.get(key or "")

    def _checkpoint(self, info: runs.RunInfo) -> Path | None:
        """The run's newest verified checkpoint (verified again only when its events changed)."""
        key = (str(info.run_dir), info.updated)
        if key not in self._checkpoints:
            self._checkpoints[key] = checkpoint_files.latest_checkpoint(info.run_dir)
        return self._checkpoints[key]

    def _resumable(self, info: runs.RunInfo | None) -> bool:
        return info is not None and info.status in RESUMABLE and self._checkpoint(info) is not None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """r only for a stopped, failed or stale run with a checkpoint to resume from (else shown dimmed)."""
        if action == "resume":
            return True if self._resumable(self.selected) else None
        return True

    @on(DataTable.RowHighlighted)
    def _show_detail(self) -> None:
        self.refresh_bindings()
        info = self.selected
        detail = self.query_one("#runs-detail", Static)
        if info is None:
            detail.update(plain(f"No runs yet in {self.state.runs_root}. Start one on the Train screen (3) "
                                "or with `tunedeck train CONFIG --detach`."))
            return
        text = f"{info.run_dir}"
        if info.pid:
            text += f" · trainer pid {info.pid}"
        if info.error:
            text += f"\nerror: {info.error}"
        detail.update(plain(text))

    # --- actions -----------------------------------------------------------------------------

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_attach()

    def action_attach(self) -> None:
        info = self.selected
        if info is not None:
            self._open_in_train(info.run_dir)

    def action_mark(self) -> None:
        info = self.selected
        if info is None:
            return
        key = str(info.run_dir)
        self.marked = [k for k in self.marked if k != key] if key in self.marked else [*self.marked, key]
        self._fill(list(self.infos.values()))

    def action_compare(self) -> None:
        if not 2 <= len(self.marked) <= MAX_RUNS:
            self.notify(f"Mark 2 to {MAX_RUNS} runs with space, then press c ({len(self.marked)} marked).",
                        severity="warning")
            return
        self.app.push_screen(CompareScreen([Path(k) for k in self.marked]))

    def _open_in_train(self, run_dir: Path) -> None:
        self.tapp.update_state(active_run=run_dir)
        self.app.switch_mode("train")

    def action_resume(self) -> None:
        info = self.selected
        if info is None or info.status not in RESUMABLE:
            self.notify("Only a stopped, failed or stale run can be resumed.", severity="warning")
            return
        if self._checkpoint(info) is None:
            self.notify(display(f"{info.run_dir.name} has no verified checkpoint to resume from: ctrl+r on the "
                                "Train screen starts a new run."), severity="warning", markup=False)
            return
        self.notify(display(f"Resuming {info.run_dir.name}…"), markup=False)
        self._resume(info.run_dir)

    @work(thread=True, exclusive=True, group="resume")
    def _resume(self, run_dir: Path) -> None:
        try:
            started = resume_run(run_dir)
        except (runs.RunError, OSError) as e:
            self.app.call_from_thread(self.notify, display(str(e)), severity="error", markup=False)
            return
        if not started:
            self.app.call_from_thread(self.notify, "The trainer exited as it started; see the Train screen.",
                                      severity="error")
        self.app.call_from_thread(self._open_in_train, run_dir)

    def action_delete(self) -> None:
        info = self.selected
        if info is None:
            return
        if info.status not in DELETABLE:
            self.notify("A training run cannot be deleted; stop it first.", severity="warning")
            return
        run_dir = info.run_dir

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete(run_dir)

        self.app.push_screen(ConfirmRun("Delete this run?", f"{run_dir} and everything in it (adapters, "
                                        "checkpoints, logs) will be removed for good.", "Delete"), answered)

    @work(thread=True, exclusive=True, group="delete")
    def _delete(self, run_dir: Path) -> None:
        try:
            runs.remove_run(run_dir)
        except (runs.RunError, OSError) as e:
            self.app.call_from_thread(self.notify, display(str(e)), severity="error", markup=False)
            return
        self.app.call_from_thread(self._deleted, run_dir)

    def _deleted(self, run_dir: Path) -> None:
        self._cache.pop(run_dir, None)
        if self.state.active_run == run_dir:
            self.tapp.update_state(active_run=None)
        self.notify(display(f"Deleted {run_dir.name}"), markup=False)
        self.action_refresh()
