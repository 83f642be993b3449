"""The label audit on the Data screen: the newest finished audit of the dataset (`tunedeck data audit`), each
example's rank and score in the list, the order "suspicious first" and a jump to the next suspect."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widgets import DataTable

from tunedeck.core.audit import AuditError, Suspect, audit_status, load_results, read_results
from tunedeck.core.data import Dataset

from ..safe import display
from .audit_run import START_BINDING, AuditRun, running_audit

AUDIT_COLUMN = ("suspect", "audit")
AUDIT_BINDINGS = [
    START_BINDING,
    Binding("a", "audit_order", "Audit order", show=False, id="data.audit_order",
            tooltip="Toggle the order: suspicious first (label audit rank) or file order"),
    Binding("n", "next_suspect(1)", "Next match/suspect", show=False, id="data.next_suspect",
            tooltip="The next example matching the search while there is one, else the audit's next suspect (by rank)"),
    Binding("N", "next_suspect(-1)", "Previous match/suspect", show=False, id="data.previous_suspect",
            tooltip="The previous example matching the search, else the audit's previous suspect"),
]


def find_audit(config_path: Path, dataset: Path) -> tuple[Path, dict[str, Any], list[Suspect]] | None:
    """The newest finished audit of `dataset` in `audits/` beside the config: its directory, its results (with
    the sha256 of the dataset file it scored) and its suspects; None if there is none."""
    root = config_path.parent / "audits"
    newest: tuple[float, Path, dict[str, Any]] | None = None
    for audit_dir in sorted(root.glob(f"{config_path.stem}-k*")) if root.is_dir() else []:
        try:
            if audit_status(audit_dir).state != "done":
                continue
            results = read_results(audit_dir)
            if Path(str(results.get("dataset", ""))).resolve() != dataset.resolve():
                continue
            when = float(results.get("time", 0.0))
        except (AuditError, OSError, TypeError, ValueError):
            continue
        if newest is None or when > newest[0]:
            newest = (when, audit_dir, results)
    if newest is None:
        return None
    try:
        suspects = load_results(newest[1])
    except AuditError:
        return None
    return (newest[1], newest[2], suspects) if suspects else None


class AuditMarks(AuditRun):
    """The Data screen's audit part (a mixin of DataScreen): `audit` maps a dataset line to its Suspect; starting
    and following an audit is AuditRun's."""

    audit: dict[int, Suspect] | None = None
    audit_first = False  # the list in audit rank (suspicious first) instead of file order
    audit_stale = False  # the audit scored another version of the dataset file (its sha256 differs)

    @work(exclusive=True, group="audit", description="look_up_audit")  # not repr(ds): 0.15 s at 10,000 examples
    async def look_up_audit(self, ds: Dataset) -> None:
        """Look up the dataset's newest finished audit; show its ranks and scores if there is one (with a warning
        when it scored another version of the file), and follow an audit of the config that is running."""
        config_path = self.state.config_path
        found = await asyncio.to_thread(find_audit, config_path, ds.path)
        if self.audit_live is None and (live := await asyncio.to_thread(running_audit, config_path)):
            self.follow_audit(live)
        if ds is not self.dataset or (found is None and self.audit is None):
            return
        audit_dir, results, suspects = found if found else (None, {}, [])
        self.audit = {s.line: s for s in suspects} if suspects else None
        self.audit_stale = bool(found) and results.get("sha256") != ds.sha256
        if self.audit_stale:
            self.notify(display(f"The label audit {audit_dir.name} scored an earlier version of {ds.path.name}: the "
                                "file changed since (its sha256 differs), so ranks may point at changed lines or "
                                "labels. A audits it again."), severity="warning", markup=False, timeout=15)
        self.audit_first = self.audit_first and self.audit is not None
        self.columns = ()
        self._set_columns(self.app.size.width)
        self._rebuild_rows()

    def audit_columns(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        """`columns` with the audit's column only while there is an audit."""
        return columns if self.audit else tuple(c for c in columns if c != AUDIT_COLUMN[1])

    def audit_cell(self, line: int) -> Text:
        s = self.audit.get(line) if self.audit else None
        return Text(display(f"#{s.rank} · {s.score:.2f}") if s else "-", justify="right", no_wrap=True)

    def audit_order(self, rows: list[int]) -> list[int]:
        """Example indices in audit rank (unscored ones last, in file order) while `audit_first` is on."""
        if not (self.audit and self.audit_first):
            return rows
        ranks = {i: s.rank for i in rows if (s := self.audit.get(self.dataset.examples[i].line))}
        return sorted(rows, key=lambda i: (ranks.get(i, len(rows) + len(self.audit) + 1), i))

    def audit_parts(self) -> list[str | tuple[str, str]]:
        """The status line's audit part: a running audit's progress, the finished one's keys (and a warning when
        it scored another version of the file); nothing without either."""
        parts: list[str | tuple[str, str]] = []
        if self.audit_progress:
            parts.append((f" · {self.audit_progress}", "bold $text-accent"))
        if self.audit:
            parts.append(f" · {'suspicious first' if self.audit_first else 'file order'} (a) · next suspect (n/N)")
            if self.audit_stale:
                name = self.loaded_path.name if self.loaded_path else "the file"
                parts.append((f" · ⚠ audit of an earlier {name} (A: again)", "bold $text-warning"))
        return parts

    def _no_audit(self) -> bool:
        if self.audit:
            return False
        name = self.loaded_path.name if self.loaded_path else "this dataset"
        self.notify(display(f"No finished label audit of {name}: A starts one (or `tunedeck data audit` on the config)."),
                    severity="warning", markup=False)
        return True

    def action_audit_order(self) -> None:
        if self.dataset is None or self._no_audit():
            return
        self.audit_first = not self.audit_first
        self._rebuild_rows()
        if self.audit_first:
            self.query_one(DataTable).move_cursor(row=0, animate=False)

    def next_suspect(self, by: int) -> None:
        """The shown example of the next (`by` 1) or previous (-1) audit rank from the current example's, round
        to the other end at the last."""
        if self.dataset is None or self._no_audit():
            return
        table = self.query_one(DataTable)
        shown = [(s.rank, int(k.value)) for k in table.rows
                 if (s := self.audit.get(self.dataset.examples[int(k.value)].line))]
        if not shown:
            self.notify("No example shown has an audit score (filter or search).")
            return
        here = self.audit.get(self.dataset.examples[self.current].line) if self.current is not None else None
        rank = here.rank if here else (0 if by > 0 else len(self.audit) + 1)
        if by > 0:
            _, i = min(shown, key=lambda ri: (ri[0] <= rank, ri[0]))
        else:
            _, i = max(shown, key=lambda ri: (ri[0] < rank, ri[0]))
        table.move_cursor(row=table.get_row_index(str(i)), animate=False)
