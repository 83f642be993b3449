"""Python's cyclic garbage collector in the app's process: full collections only while the user pauses.

A full collection walks every object the process holds: 50-220 ms on this project's 2-core machine once the
Config form is built (~190,000 objects), and CPython starts one every ~70,000 allocations, in the middle of
whatever key is being handled (the slowest j/k and Tab presses). `defer_full_collections` (run_app calls it,
after the imports) freezes what the imports built, which is never garbage, and turns the automatic full
collections off; the app runs them itself when the user has not pressed a key for `IDLE_S` (`IdleCollector`).
Collections of the young generations, which free almost all garbage, run as usual.
"""

from __future__ import annotations

import gc
import time

NEVER = 1 << 30  # a full-collection threshold no process reaches: CPython compares it with a count of collections
IDLE_S = 2.0  # seconds without a key or a click before a full collection
MAX_GAP_S = 60.0  # at most this long without one while there is no input at all (a run watched for hours)


def defer_full_collections() -> None:
    """Freeze every object alive now and leave full collections to `IdleCollector` (for the whole process)."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


def deferred() -> bool:
    """Whether `defer_full_collections` ran in this process (else CPython collects on its own)."""
    return gc.get_threshold()[2] == NEVER


class IdleCollector:
    """Runs a full collection once the user pauses after input, or after MAX_GAP_S without any."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def tick(self, last_input: float) -> bool:
        """Collect if the user has paused since `last_input` (monotonic seconds); whether it collected."""
        now = time.monotonic()
        if now - last_input < IDLE_S or (last_input < self.last and now - self.last < MAX_GAP_S):
            return False
        gc.collect()
        self.last = time.monotonic()
        return True
