"""Starting the label audit from the Data screen: `tunedeck data audit` through the same core entry point
(core.audit.start_audit: a detached driver, so the audit outlives the app), its progress in the status line
while it runs (fold i/K, step), and its ranks loaded when it ends. Re-opened while one runs, the app follows it."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.binding import Binding
from textual.timer import Timer

from tunedeck.core.audit import AuditError, AuditStatus, audit_status, start_audit

from ..safe import display

AUDIT_POLL = 1.0  # seconds between looks at a running audit
START_BINDING = Binding("A", "start_audit", "Audit labels", show=False, id="data.start_audit",
                        tooltip="Start the label audit of the config's dataset (as `tunedeck data audit`: detached, "
                                "2 folds); its progress shows in the status line, its ranks when it ends")


def progress_text(status: AuditStatus) -> str:
    """What a running audit is doing, in a few words: `audit fold 1/2 · step 12/60`."""
    n = len(status.folds)
    if status.phase == "scoring" and status.fold:
        return f"audit scoring fold {status.fold}/{n}"
    fold = next((f for f in status.folds if f.status != "finished"), None)
    if fold is None:
        return "audit scoring"
    head = f"audit fold {fold.fold}/{n}"
    if fold.total_steps:
        return f"{head} · step {fold.step}/{fold.total_steps}"
    if fold.reference:
        return f"{head} · reference {fold.reference[0]}/{fold.reference[1]}"
    return f"{head} · starting"


def running_audit(config_path: Path) -> Path | None:
    """A running audit of the config (in `audits/` beside it), to follow; None if there is none."""
    root = config_path.parent / "audits"
    for audit_dir in sorted(root.glob(f"{config_path.stem}-k*")) if root.is_dir() else []:
        try:
            if audit_status(audit_dir).active:
                return audit_dir
        except (AuditError, OSError):
            continue
    return None


class AuditRun:
    """The Data screen's audit runner (a mixin of DataScreen, beside AuditMarks)."""

    audit_progress = ""  # the status line's words while an audit runs ("" when none is followed)
    audit_live: Path | None = None  # the audit directory being followed
    _audit_timer: Timer | None = None

    def action_start_audit(self) -> None:
        """Start (or rejoin) the audit of the saved config's dataset."""
        path = self.state.config_path
        if self.audit_live is not None:
            self.notify(display(f"The label audit is running: {self.audit_progress} ({self.audit_live.name})."),
                        markup=False)
            return
        if not path.is_file():
            self.notify(display(f"The audit reads the config from its file, and {path.name} is not saved yet: save it "
                                "on the Config screen (2, then ctrl+s), then press A."), severity="warning", markup=False)
            return
        if "config" in self.state.dirty:
            self.notify(display(f"The audit uses {path.name} as saved, not the Config form's unsaved changes."),
                        severity="warning", markup=False)
        if self.edits:
            self.notify("The audit reads the dataset file: your unsaved label edits are not in it (ctrl+s saves).",
                        severity="warning")
        self.audit_progress = "audit starting (checking the data and model)"
        self._set_status()
        self._start_audit(path)

    @work(thread=True, exclusive=True, group="audit-start")
    def _start_audit(self, path: Path) -> None:
        try:
            audit_dir = start_audit(path)
        except AuditError as e:  # one line: what is wrong, naming the file or key
            self.app.call_from_thread(self._audit_failed_to_start, str(e))
        else:
            self.app.call_from_thread(self.follow_audit, audit_dir)

    def _audit_failed_to_start(self, message: str) -> None:
        self.audit_progress = ""
        self._set_status()
        self.notify(display(f"The label audit did not start: {message}"), severity="error", markup=False, timeout=15)

    def follow_audit(self, audit_dir: Path) -> None:
        """Show `audit_dir`'s progress until its driver ends, then its ranks (or why it ended without them)."""
        self.audit_live = audit_dir
        if self._audit_timer is None:
            self._audit_timer = self.set_interval(AUDIT_POLL, self._poll_audit)
        self._poll_audit()

    @work(thread=True, exclusive=True, group="audit-poll")
    def _poll_audit(self) -> None:
        audit_dir = self.audit_live
        if audit_dir is None:
            return
        try:
            status = audit_status(audit_dir)
        except AuditError as e:
            self.app.call_from_thread(self._audit_ended, audit_dir, None, str(e))
            return
        if status.active:
            self.app.call_from_thread(self._audit_progressed, audit_dir, progress_text(status))
        else:
            self.app.call_from_thread(self._audit_ended, audit_dir, status, status.message)

    def _audit_progressed(self, audit_dir: Path, text: str) -> None:
        if audit_dir == self.audit_live and text != self.audit_progress:
            self.audit_progress = text
            self._set_status()

    def _audit_ended(self, audit_dir: Path, status: AuditStatus | None, message: str) -> None:
        if audit_dir != self.audit_live:
            return
        self.audit_live, self.audit_progress = None, ""
        if self._audit_timer is not None:
            self._audit_timer.stop()
            self._audit_timer = None
        if status is not None and status.state == "done":
            self.notify(display(f"Label audit finished ({audit_dir.name}): a shows suspicious first, n the next."),
                        markup=False)
            if self.dataset is not None:
                self.look_up_audit(self.dataset)
        else:
            state = status.state if status is not None else "ended"
            why = f": {message}" if message else ""
            self.notify(display(f"The label audit {state}{why} ({audit_dir / 'audit.log'}); A resumes it."),
                        severity="error", markup=False, timeout=15)
        self._set_status()
