"""The Train screen: start a detached training run (or attach to one) and watch it live.

Training never runs in this process: `ctrl+r` freezes the current config into a run directory and
spawns `tunedeck _run` in its own session (`core.runs.spawn_detached`), so quitting the app or
losing the terminal leaves it training. The screen follows the run's events.jsonl from a thread
worker and redraws at most four times a second.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ProgressBar, RichLog, Static
from textual.worker import get_current_worker

from tunedeck.core import memory, runs
from tunedeck.core.config import Config
from tunedeck.core.progress import fmt_duration

from ..safe import display, plain
from ..widgets.event_follower import EventFollower, TrainEvents
from ..widgets.gauges import MemoryGauges
from ..widgets.run_confirm import ConfirmRun
from ..widgets.series_plot import SeriesPlot
from ..widgets.train_history import KTO_SERIES, LOSS_SERIES, RunHistory, fmt_number

if TYPE_CHECKING:
    from ..state import AppState

KL_NOTE = ("KL is clamped at 0: the policy is not yet further from the reference on mismatched pairs "
           "than it started — expected early")
RESUMABLE = ("stopped", "failed", "stale")


def find_running(runs_root: Path) -> Path | None:
    """The newest run under `runs_root` whose trainer is alive (holds the run's lock), if any."""
    if not runs_root.is_dir():
        return None
    live = [p for p in runs_root.iterdir() if (p / "config.toml").is_file() and runs.is_locked(p)]
    return max(live, key=lambda p: p.name, default=None)


def start_run(cfg: Config, config_path: Path | None, runs_root: Path) -> tuple[Path, bool]:
    """Freeze `cfg` into a new run directory and start its detached trainer: (run_dir, started)."""
    from tunedeck.core.trainer import prepare_run

    run_dir = prepare_run(copy.deepcopy(cfg), config_path, runs_root)
    return run_dir, runs.wait_started(run_dir, runs.spawn_detached(run_dir), timeout=120)


def resume_run(run_dir: Path) -> bool:
    """Start a detached trainer that resumes `run_dir` from its latest verified checkpoint."""
    if runs.is_locked(run_dir):
        raise runs.RunError(f"{run_dir.name} is already running")
    return runs.wait_started(run_dir, runs.spawn_detached(run_dir, resume=True), timeout=120)


class Launched(Message):
    """A trainer was started (or failed to start: `error`) for `run_dir`."""

    def __init__(self, run_dir: Path | None, started: bool, error: str = "") -> None:
        super().__init__()
        self.run_dir = run_dir
        self.started = started
        self.error = error


class Stopped(Message):
    """A graceful stop finished: `text` says how, `ok` whether it worked."""

    def __init__(self, text: str, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class TrainScreen(Screen):
    CSS_PATH = "train.tcss"
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", id="train.start",
                tooltip="Start training with the current config (a detached process that outlives the app)"),
        Binding("s", "stop", "Stop", id="train.stop", tooltip="Stop the run gracefully: checkpoint, then exit"),
        Binding("r", "resume", "Resume", id="train.resume",
                tooltip="Resume a stopped, failed or stale run from its latest verified checkpoint"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run_dir: Path | None = None
        self.history = RunHistory()
        self.alive = False
        self.launching = False
        self._attach_id = 0
        self._caught_up = False
        self._dead_checks = 0
        self._forecast_gb: float | None = None
        self._problem_for: tuple[int, str] | None = None
        self._plotted: tuple[int, int] | None = None  # (attach, events) last drawn
        self._dirty = True

    @property
    def state(self) -> AppState:
        return self.app.state  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="train-progress"):
            yield Label("step 0/?", id="step", markup=False)
            yield ProgressBar(total=1, show_eta=False, id="progress")
        yield Static(id="status")
        yield Static(id="stats")
        yield Static(id="problem")
        with Horizontal(id="plots"):
            yield SeriesPlot("loss", id="loss-plot")
            with Vertical(id="kto"):
                yield SeriesPlot("KTO rewards, margin, KL", id="kto-plot")
                yield Static(KL_NOTE, id="kl-note", markup=False)
        with Horizontal(id="train-bottom"):
            yield MemoryGauges(id="gauges")
            yield RichLog(id="log", max_lines=1000, wrap=True, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(0.25, self._redraw)
        self.set_interval(1.0, self._check_alive)

    def on_screen_resume(self) -> None:
        """Attach to the run the app points at, else (first time) to a run still training."""
        run = self.state.active_run
        if run is None and self.run_dir is None:
            run = find_running(self.state.runs_root)
        if run is not None and run != self.run_dir:
            self.attach(run)
        elif run is None and self.run_dir is not None:
            self.detach()

    # --- attaching ---------------------------------------------------------------------------

    def attach(self, run_dir: Path) -> None:
        """Show `run_dir`: replay its whole event history, then follow it live."""
        self._attach_id += 1
        self.run_dir = run_dir
        self.state.active_run = run_dir
        self.history = RunHistory()
        self.alive = runs.is_locked(run_dir)
        self._caught_up = False
        self._dead_checks = 0
        self._forecast_gb = None
        self._problem_for = None
        self.query_one(RichLog).clear()
        self._follow(run_dir, self._attach_id)
        self._forecast(run_dir, self._attach_id)
        self.app.refresh_header()  # type: ignore[attr-defined]
        self._changed()

    def detach(self) -> None:
        self._attach_id += 1
        self.workers.cancel_group(self, "follow")
        self.run_dir = None
        self.history = RunHistory()
        self.alive = False
        self.query_one(RichLog).clear()
        self.app.refresh_header()  # type: ignore[attr-defined]
        self._changed()

    @work(thread=True, exclusive=True, group="follow")
    def _follow(self, run_dir: Path, attach: int) -> None:
        worker = get_current_worker()
        EventFollower(run_dir, self, attach).run(lambda: worker.is_cancelled)

    @work(thread=True, exclusive=True, group="forecast")
    def _forecast(self, run_dir: Path, attach: int) -> None:
        forecast: Callable[[Config], Any] | None = getattr(memory, "forecast", None)
        if forecast is None:
            return
        from tunedeck.core.config import load

        try:
            total = float(forecast(load(run_dir / "config.toml")[0]).total_gb)
        except Exception:  # noqa: BLE001 - the forecast is advisory: without it the bars scale to the machine
            return
        self.app.call_from_thread(self._set_forecast, attach, total)

    def _set_forecast(self, attach: int, total_gb: float) -> None:
        if attach == self._attach_id:
            self._forecast_gb = total_gb
            self._changed()

    def on_train_events(self, message: TrainEvents) -> None:
        if message.attach != self._attach_id:
            return
        for event in message.events:
            self.history.apply(event)
        self._caught_up = self._caught_up or message.caught_up
        self._changed()

    def _check_alive(self) -> None:
        if self.run_dir is None:
            return
        alive = runs.is_locked(self.run_dir)
        self._dead_checks = 0 if alive else self._dead_checks + 1
        if alive or alive != self.alive or self._dead_checks == 2:  # alive: the elapsed time ticks
            self.alive = alive
            self._changed()

    @property
    def status(self) -> str:
        """none | starting | running | finished | stopped | failed | stale | checking."""
        h = self.history
        if self.run_dir is None:
            return "none"
        if self.alive:
            return "running" if h.status == "running" else "starting"
        if h.status in ("finished", "stopped", "failed"):
            return h.status
        if self._caught_up and self._dead_checks >= 2:
            return "stale"  # no trainer holds the lock and the log ends without a final event
        return "checking"

    # --- drawing -----------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True

    def _redraw(self) -> None:
        if not self._dirty or not self.is_current:
            return
        self._dirty = False
        h, status = self.history, self.status
        self.query_one("#step", Label).update(f"step {h.step}/{h.total or '?'}")
        busy = self.launching or status == "starting"  # an indeterminate (pulsing) bar only while starting
        self.query_one("#progress", ProgressBar).update(total=h.total or (None if busy else 1), progress=h.step)
        self.query_one("#status", Static).update(plain(self._status_text(status)))
        self.query_one("#stats", Static).update(plain(self._stats_text()))
        self._show_problem(status)
        kto = h.method == "kto"
        self.query_one("#kto", Vertical).display = kto
        if (self._attach_id, h.events) != self._plotted:
            self._plotted = (self._attach_id, h.events)
            self.query_one("#loss-plot", SeriesPlot).draw({n: h.series[n] for n in LOSS_SERIES})
            if kto:
                self.query_one("#kto-plot", SeriesPlot).draw({n: h.series[n] for n in KTO_SERIES})
        self.query_one("#kl-note").display = kto and h.last.get("kl") == 0.0
        self.query_one(MemoryGauges).show(h.last, self._forecast_gb)
        log = self.query_one(RichLog)
        while h.log:
            log.write(Text(display(h.log.popleft())))
        self.refresh_bindings()

    def _status_text(self, status: str) -> str:
        h, name = self.history, self.run_dir.name if self.run_dir else ""
        if self.launching:
            return "Starting the trainer…"
        if status == "none":
            c = self.state.config
            return (f"No run attached. ctrl+r starts training with the current config: {c.train.method}, "
                    f"{c.train.iters} steps, model {c.model.path}. The Runs screen (5) attaches to older runs.")
        return name + ": " + {
            "starting": "the trainer is starting (loading the model and data)…",
            "running": f"training (pid {runs.read_pid(self.run_dir) if self.run_dir else '?'}). "
                       "Quitting tunedeck leaves it running; s stops it with a checkpoint.",
            "finished": "finished. The adapters are in its adapters/ directory; try them on the Chat screen (4).",
            "stopped": f"stopped at step {h.step}. r resumes it from its latest checkpoint.",
            "failed": "training FAILED (see below). r resumes it from its latest checkpoint.",
            "stale": "the trainer is gone without a final event: it was killed or crashed (see below). "
                     "r resumes it from its latest checkpoint.",
            "checking": "reading its events…",
        }[status]

    def _stats_text(self) -> str:
        h, last = self.history, self.history.last
        if h.started is None:
            return ""
        end = time.time() if self.alive else (h.updated or h.started)
        parts = [
            f"loss {fmt_number(last.get('loss'))}",
            f"val {fmt_number(h.val_loss)} (best {fmt_number(h.best_val_loss)})",
            f"lr {fmt_number(last.get('lr'), '.2e')}",
            f"{fmt_number(last.get('tokens_per_sec'), '.0f')} tok/s"
            + (f" ({h.workers} workers, {fmt_number(last.get('tokens_per_sec_per_worker'), '.0f')} each)"
               if h.workers > 1 else ""),
            f"elapsed {fmt_duration(end - h.started)}",
        ]
        if self.alive and "eta_sec" in last:
            parts.append(f"ETA {fmt_duration(last['eta_sec'])}")
        parts.append(f"checkpoint {h.checkpoint or '-'}")
        return " · ".join(parts)

    def _show_problem(self, status: str) -> None:
        panel = self.query_one("#problem", Static)
        panel.display = status in ("failed", "stale")
        if not panel.display or self._problem_for == (self._attach_id, status) or self.run_dir is None:
            return
        self._problem_for = (self._attach_id, status)
        if status == "failed":
            head = f"Training failed: {self.history.error}"
        else:
            head = ("The training process ended without saying why (no done, stopped or error event): "
                    "killed, out of memory, or the machine restarted.")
        tail = runs.tail_log(self.run_dir, 12)
        body = "\n".join(tail) if tail else "(train.log is empty or missing)"
        panel.update(plain(f"{head}\n\nLast lines of {self.run_dir / 'train.log'}:\n{body}"))

    # --- actions -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        status = self.status
        if action == "stop":
            return True if status in ("running", "starting") else None
        if action == "resume":
            return True if status in RESUMABLE and not self.launching else None
        if action == "start":
            return True if not self.alive and not self.launching else None
        return True

    def action_start(self) -> None:
        if self.alive or self.launching:
            self.notify("A run is already training here; stop it (s) first.", severity="warning")
            return
        self.launching = True
        self._changed()
        self._launch(copy.deepcopy(self.state.config), None)

    def action_resume(self) -> None:
        if self.run_dir is None or self.status not in RESUMABLE or self.launching:
            self.notify("Only a stopped, failed or stale run can be resumed.", severity="warning")
            return
        self.launching = True
        self._changed()
        self._launch(None, self.run_dir)

    @work(thread=True, exclusive=True, group="launch")
    def _launch(self, cfg: Config | None, resume: Path | None) -> None:
        s = self.state
        try:
            if resume is not None:
                self.post_message(Launched(resume, resume_run(resume)))
            elif cfg is not None:
                self.post_message(Launched(*start_run(cfg, s.config_path, s.runs_root)))
        except (runs.RunError, OSError, ValueError) as e:
            self.post_message(Launched(None, False, str(e)))

    def on_launched(self, message: Launched) -> None:
        self.launching = False
        if message.run_dir is None:
            self.notify(display(f"Could not start training: {message.error}"), severity="error", markup=False)
            self._changed()
            return
        self.attach(message.run_dir)
        if not message.started:
            self.notify("The trainer exited as it started; the end of train.log is shown.", severity="error")

    def action_stop(self) -> None:
        run_dir = self.run_dir
        if run_dir is None or not self.alive:
            self.notify("No run is training.", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify("Stopping: the trainer saves a checkpoint after its current step…")
                # A daemon thread, not a worker: waiting for the trainer must never hold up quitting.
                threading.Thread(target=self._stop, args=(run_dir,), daemon=True).start()

        self.app.push_screen(
            ConfirmRun("Stop training?", f"{run_dir.name} will save a checkpoint after its current step and "
                       "exit. r resumes it later.", "Stop"), answered)

    def _stop(self, run_dir: Path) -> None:
        try:
            info = runs.stop_run(run_dir, timeout=600)
        except runs.RunError as e:
            self.post_message(Stopped(str(e), False))
            return
        self.post_message(Stopped(f"{run_dir.name}: {info.status} at step {info.step}", True))

    def on_stopped(self, message: Stopped) -> None:
        self.notify(display(message.text), severity="information" if message.ok else "error", markup=False)
