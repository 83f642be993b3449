"""The label audit on the Data screen: the newest finished audit of the dataset (`tunedeck data audit`), each
example's rank and score in the list, the order "suspicious first" and a jump to the next suspect."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widgets import DataTable

from tunedeck.core.audit import AuditError, Suspect, audit_status, load_results, read_results
from tunedeck.core.data import Dataset

from ..safe import display

AUDIT_COLUMN = ("suspect", "audit")
AUDIT_BINDINGS = [
    Binding("a", "audit_order", "Audit order", show=False, id="data.audit_order",
            tooltip="Toggle the order: suspicious first (label audit rank) or file order"),
    Binding("n", "next_suspect", "Next suspect", show=False, id="data.next_suspect",
            tooltip="Jump to the next suspect of the label audit (by rank)"),
]


def find_audit(config_path: Path, dataset: Path) -> list[Suspect] | None:
    """The suspects of the newest finished audit of `dataset` in `audits/` beside the config, or None."""
    root = config_path.parent / "audits"
    newest: tuple[float, Path] | None = None
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
            newest = (when, audit_dir)
    if newest is None:
        return None
    try:
        return load_results(newest[1]) or None
    except AuditError:
        return None


class AuditMarks:
    """The Data screen's audit part (a mixin of DataScreen): `audit` maps a dataset line to its Suspect."""

    audit: dict[int, Suspect] | None = None
    audit_first = False  # the list in audit rank (suspicious first) instead of file order

    @work(exclusive=True, group="audit")
    async def look_up_audit(self, ds: Dataset) -> None:
        """Look up the dataset's newest finished audit; show its ranks and scores if there is one."""
        suspects = await asyncio.to_thread(find_audit, self.state.config_path, ds.path)
        if ds is not self.dataset or (suspects is None and self.audit is None):
            return
        self.audit = {s.line: s for s in suspects} if suspects else None
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

    def audit_parts(self) -> list[str]:
        """The status line's audit part (nothing without an audit)."""
        if not self.audit:
            return []
        return [f" · {'suspicious first' if self.audit_first else 'file order'} (a) · next suspect (n)"]

    def _no_audit(self) -> bool:
        if self.audit:
            return False
        name = self.loaded_path.name if self.loaded_path else "this dataset"
        self.notify(display(f"No finished label audit of {name}: run `tunedeck data audit` on the config."),
                    severity="warning", markup=False)
        return True

    def action_audit_order(self) -> None:
        if self.dataset is None or self._no_audit():
            return
        self.audit_first = not self.audit_first
        self._rebuild_rows()
        if self.audit_first:
            self.query_one(DataTable).move_cursor(row=0, animate=False)

    def action_next_suspect(self) -> None:
        """The shown example of the next audit rank after the current example's (round to the top at the end)."""
        if self.dataset is None or self._no_audit():
            return
        table = self.query_one(DataTable)
        shown = [(s.rank, int(k.value)) for k in table.rows
                 if (s := self.audit.get(self.dataset.examples[int(k.value)].line))]
        if not shown:
            self.notify("No example shown has an audit score (filter or search).")
            return
        here = self.audit.get(self.dataset.examples[self.current].line) if self.current is not None else None
        rank = here.rank if here else 0
        _, i = min(shown, key=lambda ri: (ri[0] <= rank, ri[0]))
        table.move_cursor(row=table.get_row_index(str(i)), animate=False)
