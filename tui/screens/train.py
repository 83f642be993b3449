"""The Train screen: start a detached training run (or attach to one) and watch it live.

Training never runs in this process: `ctrl+r` freezes the current config into a run directory and
spawns `tunedeck _run` in its own session (`core.runs.spawn_detached`), so quitting the app or
losing the terminal leaves it training. The screen follows the run's events.jsonl from a thread
worker (`EventFollower`, which posts `TrainEvents` in batches at most four times a second) and redraws
on each change while it is shown: a batch, the trainer's liveness (checked each second), a launch.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Header, Label, ProgressBar, Static
from textual.worker import get_current_worker

from tunedeck.core import checkpoint_files, forecast, runs
from tunedeck.core.config import Config
from tunedeck.core.orchestrate import PreflightError, find_running, resume_run, start_run
from tunedeck.core.progress import fmt_duration

from ..messages import RunLaunched, RunStopped, TrainEvents
from ..safe import display, plain
from ..widgets.event_follower import EventFollower
from ..widgets.event_log import EventLog
from ..widgets.forecast_panel import forecast_lengths
from ..widgets.gauges import MemoryGauges
from ..widgets.key_footer import KeyFooter
from ..widgets.run_confirm import ConfirmRun
from ..widgets.samples_panel import SamplesPanel
from ..widgets.series_plot import LineStyle, PlotPanel
from ..widgets.train_history import KL_SERIES, REWARD_SERIES, RunHistory, Series, ema, fmt_number
from .base import TunedeckScreen

KL_NOTE = ("KL is clamped at 0: the policy is not yet further from the reference on mismatched pairs "
           "than it started — expected early")
RESUMABLE = ("stopped", "failed", "stale")
EMA = "train loss (EMA)"
#: Each series' colour (a theme variable) and its marker without colour (NO_COLOR): no two alike on a plot.
STYLES = {
    "train loss": LineStyle("primary", "•"),
    EMA: LineStyle("primary", "*"),
    "val loss": LineStyle("accent", "o"),
    "rewards_chosen": LineStyle("success", "+"),
    "rewards_rejected": LineStyle("error", "x"),
    "margin": LineStyle("primary", "o"),
    "kl": LineStyle("secondary", "*"),
}
RAW = LineStyle("primary", "·", faint=True)  # the raw loss behind its moving average
LABELS = {"train loss": "train", "val loss": "val", EMA: "train (EMA)", "rewards_chosen": "chosen",
          "rewards_rejected": "rejected", "margin": "margin", "kl": "KL"}


class TrainScreen(TunedeckScreen):
    CSS_PATH = "train.tcss"
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", id="train.start",
                tooltip="Start training with the current config (a detached process that outlives the app)"),
        Binding("s", "stop", "Stop", id="train.stop", tooltip="Stop the run gracefully: checkpoint, then exit"),
        Binding("r", "resume", "Resume", id="train.resume",
                tooltip="Resume a stopped, failed or stale run from its latest verified checkpoint"),
        Binding("e", "toggle_ema", "Smooth", id="train.ema",
                tooltip="Show the loss's moving average over faint raw points, or the raw points alone"),
        Binding("right_square_bracket", "cycle_sample(1)", "Next prompt", key_display="]", id="train.sample_next",
                tooltip="Samples panel: the answers to the next held-out prompt"),
        Binding("left_square_bracket", "cycle_sample(-1)", "Previous prompt", key_display="[", show=False,
                id="train.sample_previous", tooltip="Samples panel: the answers to the previous held-out prompt"),
    ]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(self) -> None:
        super().__init__()
        self.run_dir: Path | None = None
        self.history = RunHistory()
        self.alive = False
        self.paused = False  # the live trainer's process is stopped (SIGSTOP, ctrl+z)
        self.launching = False
        self._resume_point: tuple[object, Path | None] | None = None  # (key, newest verified checkpoint)
        self._attach_id = 0
        self._caught_up = False
        self._dead_checks = 0
        self._forecast_gb: float | None = None
        self._budget_gb: float | None = None
        self.smooth = True  # the loss plot shows its EMA over the raw points (e toggles)
        self._problem_for: tuple[int, str] | None = None
        self._plotted: tuple[int, int, bool] | None = None  # (attach, events, smooth) last plotted
        self._redraw_queued = False  # a redraw is queued behind the messages waiting: changes until then join it
        self.sample_prompt = 0  # the Samples panel's prompt, an index into SamplesPanel.prompts

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="train-progress"):
            yield Label("step 0/?", id="step", markup=False)
            yield ProgressBar(total=1, show_eta=False, id="progress")
        yield Static(id="status")
        yield Static(id="stats")
        yield Static(id="problem")
        with VerticalScroll(id="plots", can_focus=False):
            yield PlotPanel("loss", plot_id="loss-plot", id="loss-panel")
            with Vertical(id="kto"):
                yield PlotPanel("KTO rewards", plot_id="kto-plot", short_title="rewards", ticks_below=True,
                                id="kto-panel")
                yield PlotPanel("KL (policy vs reference)", plot_id="kl-plot", short_title="KL", id="kl-panel")
                yield Static(KL_NOTE, id="kl-note", markup=False)
        yield SamplesPanel(id="samples")
        with Horizontal(id="train-bottom"):
            yield MemoryGauges(id="gauges")
            yield EventLog(id="log")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.set_interval(1.0, self._check_alive)  # the trainer's process says nothing when it dies or pauses
        self.tapp.state_changed_signal.subscribe(self, self._state_changed)

    def on_screen_resume(self) -> None:
        """Attach to the run the app points at, else (first time) to a run still training; show what
        happened while another screen was shown."""
        run = self.state.active_run
        if run is None and self.run_dir is None:
            run = find_running(self.state.runs_root)
        self._show_run(run)
        self._changed()

    def _state_changed(self, fields: frozenset[str]) -> None:
        if "active_run" in fields:  # the Runs screen attached another run, or deleted this one
            self._show_run(self.state.active_run)

    def _show_run(self, run: Path | None) -> None:
        if run is not None and run != self.run_dir:
            self.attach(run)
        elif run is None and self.run_dir is not None:
            self.detach()

    # --- attaching ---------------------------------------------------------------------------

    def attach(self, run_dir: Path) -> None:
        """Show `run_dir`: replay its whole event history, then follow it live."""
        self._attach_id += 1
        self.run_dir = run_dir
        self.tapp.update_state(active_run=run_dir)
        self.history = RunHistory()
        self.alive = runs.is_locked(run_dir)
        self._caught_up = False
        self._dead_checks = 0
        self._forecast_gb = None
        self._budget_gb = None
        self._problem_for = None
        self.query_one(EventLog).clear()
        self._follow(run_dir, self._attach_id)
        self._forecast(run_dir, self._attach_id)
        self._changed()

    def detach(self) -> None:
        self._attach_id += 1
        self.workers.cancel_group(self, "follow")
        self.run_dir = None
        self.history = RunHistory()
        self.alive = False
        self.query_one(EventLog).clear()
        self._changed()

    @work(thread=True, exclusive=True, group="follow")
    def _follow(self, run_dir: Path, attach: int) -> None:
        worker = get_current_worker()
        EventFollower(run_dir, self, attach).run(lambda: worker.is_cancelled)

    @work(thread=True, exclusive=True, group="forecast")
    def _forecast(self, run_dir: Path, attach: int) -> None:
        """The run's forecast peak and the machine's budget, as the Config screen computes them."""
        from tunedeck.core.config import load

        budget = self.state.memory_budget_gb
        try:
            cfg = load(run_dir / "config.toml")[0]
            same_data = self.state.dataset is not None and self.state.dataset.path == self.state.resolve_data_path(
                cfg.data.path)
            lengths = forecast_lengths(self.state, cfg.data.max_seq_len) if same_data else {}
            fc = forecast.forecast(cfg, budget_gb=budget, **lengths)
            total = float(fc.total_gb)
            budget = float(getattr(fc, "budget_gb", budget) or 0) or None
        except Exception:  # noqa: BLE001 - the forecast is advisory: without it the bars scale to the machine
            return
        self.app.call_from_thread(self._set_forecast, attach, total, budget)

    def _set_forecast(self, attach: int, total_gb: float, budget_gb: float | None) -> None:
        if attach == self._attach_id:
            self._forecast_gb, self._budget_gb = total_gb, budget_gb
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
        pid = runs.read_pid(self.run_dir) if alive else None
        paused = pid is not None and runs.process_stopped(pid)
        self._dead_checks = 0 if alive else self._dead_checks + 1
        if alive or alive != self.alive or paused != self.paused or self._dead_checks == 2:  # alive: time ticks
            self.alive, self.paused = alive, paused
            self._changed()

    @property
    def status(self) -> str:
        """none | starting | running | paused | finished | stopped | failed | stale | checking."""
        h = self.history
        if self.run_dir is None:
            return "none"
        if self.alive:
            if self.paused:
                return "paused"
            return "running" if h.status == "running" else "starting"
        if h.status in ("finished", "stopped", "failed"):
            return h.status
        if self._caught_up and self._dead_checks >= 2:
            return "stale"  # no trainer holds the lock and the log ends without a final event
        return "checking"

    # --- drawing -----------------------------------------------------------------------------

    def _changed(self) -> None:
        """Something shown changed: redraw once the messages already waiting are handled (a burst of event
        batches draws once). A screen not shown is redrawn when it is shown again."""
        if self.is_current and not self._redraw_queued:
            self._redraw_queued = True
            self.call_later(self._redraw)

    def _redraw(self) -> None:
        self._redraw_queued = False
        if not self.is_current:
            return
        h, status = self.history, self.status
        self.query_one("#step", Label).update(f"step {h.step}/{h.total or '?'}")
        busy = self.launching or status == "starting"  # an indeterminate (pulsing) bar only while starting
        bar = self.query_one("#progress", ProgressBar)
        if (ref := self._reference(status)) and ref["total"]:  # the reference pass: its own fraction
            bar.update(total=ref["total"], progress=ref["done"])
        else:
            bar.update(total=h.total or (None if busy else 1), progress=h.step)
        self.query_one("#status", Static).update(plain(self._status_text(status)))
        self.query_one("#stats", Static).update(plain(self._stats_text()))
        self._show_problem(status)
        kto = h.method == "kto"
        self.query_one("#kto", Vertical).display = kto
        if (self._attach_id, h.events, self.smooth) != self._plotted:
            self._plotted = (self._attach_id, h.events, self.smooth)
            self._draw_plots(kto)
        self.query_one("#kl-note").display = kto and h.last.get("kl") == 0.0
        self.query_one(MemoryGauges).show(h.last, self._forecast_gb, self._budget_gb)
        self.query_one(SamplesPanel).show(h, self.sample_prompt)
        self.set_class(bool(SamplesPanel.prompts(h)), "-samples")
        log = self.query_one(EventLog)
        while h.log:
            log.add(Text(display(h.log.popleft())))
        self.refresh_bindings()

    def _draw_plots(self, kto: bool) -> None:
        """The loss plot (its EMA over faint raw points when smoothing), the KTO rewards and KL, all over
        the same step range so that their x-axes line up."""
        h = self.history
        x_max = h.total or None
        train, val = h.series["train loss"], h.series["val loss"]
        styles = dict(STYLES)
        loss: dict[str, Series] = {"train loss": train}
        if self.smooth and len(train) > 1:
            smoothed = Series(cap=train.cap)
            for x, y in zip(train.xs, ema(train.ys), strict=True):
                smoothed.xs.append(x)
                smoothed.ys.append(y)
            loss[EMA] = smoothed
            styles["train loss"] = RAW
        loss["val loss"] = val
        labels = dict(LABELS, **({"train loss": "raw"} if EMA in loss else {}))
        self.query_one("#loss-panel", PlotPanel).draw(loss, styles, x_max, labels)
        if kto:
            self.query_one("#kto-panel", PlotPanel).draw({n: h.series[n] for n in REWARD_SERIES}, styles, x_max, LABELS)
            self.query_one("#kl-panel", PlotPanel).draw({n: h.series[n] for n in KL_SERIES}, styles, x_max, LABELS)

    def _status_text(self, status: str) -> str:
        h, name = self.history, self.run_dir.name if self.run_dir else ""
        if self.launching:
            return "Starting the trainer…"
        if status == "none":
            c = self.state.config
            return (f"No run attached. ctrl+r starts training with the current config: {c.train.method}, "
                    f"{c.train.iters} steps, model {c.model.path}. The Runs screen (5) attaches to older runs.")
        if ref := self._reference(status):
            return (f"{name}: computing the KTO reference log-probs (once, before step 1): "
                    f"{ref['done']:.0f}/{ref['total']:.0f} sequences · {fmt_number(ref['rate'], '.1f')} seq/s · "
                    f"ETA {fmt_duration(ref['eta_s'])}. s stops it.")
        pid = runs.read_pid(self.run_dir) if self.run_dir and self.alive else None
        if status in RESUMABLE:
            ckpt = self._resume_checkpoint()
            then = (f"r resumes it from {ckpt.name}." if ckpt else
                    "It has no checkpoint to resume from: fix the cause, then ctrl+r starts a new run.")
        return name + ": " + {
            "starting": "the trainer is starting (loading the model and data)…",
            "running": f"training (pid {pid or '?'}). Quitting tunedeck leaves it running; s stops it with a checkpoint.",
            "paused": f"PAUSED: the trainer (pid {pid or '?'}) is stopped (SIGSTOP or ctrl+z); `kill -CONT {pid or 'PID'}` "
                      "continues it, s stops it with a checkpoint.",
            "finished": "finished. The adapters are in its adapters/ directory; try them on the Chat screen (4).",
            "stopped": f"stopped at step {h.step}. " + (then if status == "stopped" else ""),
            "failed": "training FAILED (see below). " + (then if status == "failed" else ""),
            "stale": "the trainer is gone without a final event: it was killed or crashed (see below). "
                     + (then if status == "stale" else ""),
            "checking": "reading its events…",
        }[status]

    def _resume_checkpoint(self) -> Path | None:
        """The newest verified checkpoint of the attached run (verified once per run, status and checkpoint)."""
        key = (self._attach_id, self.status, self.history.checkpoint)
        if self._resume_point is None or self._resume_point[0] != key:
            self._resume_point = (key, checkpoint_files.latest_checkpoint(self.run_dir) if self.run_dir else None)
        return self._resume_point[1]

    def _reference(self, status: str) -> dict[str, float | None] | None:
        """The reference pass's progress while the trainer is in it, else None."""
        return self.history.reference if status == "starting" else None

    def _stats_text(self) -> str:
        h, last = self.history, self.history.last
        if h.started is None:
            return ""
        end = time.time() if self.alive and not self.paused else (h.updated or h.started)
        parts = [
            f"loss {fmt_number(last.get('loss'))}",
            f"val {fmt_number(h.val_loss)} (best {fmt_number(h.best_val_loss)})",
        ]
        if (margin := h.val.get("val_margin")) is not None:
            parts.append(f"val margin {margin:+.3f}")
        if (acc := h.val.get("val_reward_accuracy")) is not None:
            parts.append(f"reward acc {acc:.0%}")
        parts += [
            f"lr {fmt_number(last.get('lr'), '.2e')}",
            f"{fmt_number(last.get('tokens_per_sec'), '.0f')} trained tok/s"
            + (f" ({h.workers} workers, {fmt_number(last.get('tokens_per_sec_per_worker'), '.0f')} each)"
               if h.workers > 1 else ""),
            f"{fmt_number(last.get('seq_tokens_per_sec'), '.0f')} seq tok/s",
            f"elapsed {fmt_duration(end - h.started)}",
        ]
        if self.alive and not self.paused and "eta_sec" in last and self.history.reference is None:
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
            return True if status in ("running", "starting", "paused") else None
        if action == "resume":  # only when there is a checkpoint to resume from
            return True if status in RESUMABLE and not self.launching and self._resume_checkpoint() else None
        if action == "start":
            return True if not self.alive and not self.launching else None
        if action == "cycle_sample":
            return len(SamplesPanel.prompts(self.history)) > 1
        return True

    def action_toggle_ema(self) -> None:
        self.smooth = not self.smooth
        self.notify("Loss: moving average over faint raw points." if self.smooth else "Loss: raw points.")
        self._changed()

    def action_cycle_sample(self, by: int) -> None:
        self.sample_prompt = (self.sample_prompt + by) % max(len(SamplesPanel.prompts(self.history)), 1)
        self._changed()

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
        if self._resume_checkpoint() is None:
            self.notify("This run has no verified checkpoint to resume from.", severity="warning")
            return
        self.launching = True
        self._changed()
        self._launch(None, self.run_dir)

    @work(thread=True, exclusive=True, group="launch")
    def _launch(self, cfg: Config | None, resume: Path | None) -> None:
        s = self.state
        try:
            if resume is not None:
                self.post_message(RunLaunched(resume, resume_run(resume)))
            elif cfg is not None:
                self.post_message(RunLaunched(*start_run(cfg, s.config_path, s.runs_root)))
        except (runs.RunError, PreflightError, OSError, ValueError) as e:
            self.post_message(RunLaunched(None, False, str(e)))

    def on_run_launched(self, message: RunLaunched) -> None:
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
            self.post_message(RunStopped(str(e), False))
            return
        self.post_message(RunStopped(f"{run_dir.name}: {info.status} at step {info.step}", True))

    def on_run_stopped(self, message: RunStopped) -> None:
        self.notify(display(message.text), severity="information" if message.ok else "error", markup=False)
