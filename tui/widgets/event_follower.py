"""Follow a run's events.jsonl from a thread and post the events to a widget in batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.message_pump import MessagePump

from tunedeck.core import events, runs

from ..messages import TrainEvents

POLL = 0.05  # seconds between reads at the end of the file: a new event shows within ~50 ms, for one cheap
# read() a poll (a stat would cost the same syscall), ~20 a second in this thread


class EventFollower:
    """Tails `run_dir/events.jsonl` (partial lines, garbage and huge lines are handled by
    `core.runs.iter_events`, reading again every `poll` seconds at its end) and posts `TrainEvents` at most every
    `interval` seconds while a history is replayed, or at once when `batch` events are waiting; a new event after
    the end is posted at once."""

    def __init__(self, run_dir: Path, target: MessagePump, attach: int, interval: float = 0.25,
                 batch: int = 2000, poll: float = POLL) -> None:
        self.run_dir = run_dir
        self.target = target
        self.attach = attach
        self.interval = interval
        self.batch = batch
        self.poll = poll
        self._pending: list[events.Event] = []
        self._posted = time.monotonic()

    def _flush(self, caught_up: bool) -> None:
        if self._pending or caught_up:
            self.target.post_message(TrainEvents(self.run_dir, self._pending, caught_up, self.attach))
            self._pending = []
            self._posted = time.monotonic()

    def run(self, cancelled: Callable[[], bool]) -> None:
        """Follow until `cancelled()` is true (call from a thread worker)."""
        caught_up = False

        def idle() -> bool:  # iter_events calls this whenever it has nothing new to read
            nonlocal caught_up
            if not caught_up or self._pending:
                self._flush(True)
                caught_up = True
            return cancelled()

        try:
            for event in runs.iter_events(self.run_dir, follow=True, poll=self.poll, stop=idle):
                self._pending.append(event)
                if len(self._pending) >= self.batch or time.monotonic() - self._posted >= self.interval:
                    if cancelled():
                        return
                    self._flush(False)
        except OSError as e:  # events.jsonl is a link, a FIFO or a device (refused, never waited on), or unreadable
            self._pending.append(events.build("error", 0, kind="run-dir", message=f"cannot follow this run: {e}"))
            self._flush(True)
