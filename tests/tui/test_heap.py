"""The app process's garbage collector: no automatic full collection, one in each pause of the user."""

from __future__ import annotations

import gc
import time

from tunedeck.tui import heap


def test_full_collections_wait_for_a_pause() -> None:
    full: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(1)

    before = gc.get_threshold()
    gc.callbacks.append(count)
    try:
        heap.defer_full_collections()
        assert heap.deferred() and gc.get_freeze_count() > 0
        kept = [[] for _ in range(300_000)]  # ~430 young collections: CPython runs a full one every 100
        assert not full
        del kept
        collector = heap.IdleCollector()
        now = time.monotonic()
        collector.last = now - 10  # made 10 s ago; the last key is given below, as seconds on the same clock
        assert not collector.tick(now)  # a key just now
        assert collector.tick(now - heap.IDLE_S) and len(full) == 1  # the user paused after it
        assert not collector.tick(now - heap.IDLE_S)  # no input since: not again
        collector.last -= heap.MAX_GAP_S
        assert collector.tick(now - heap.IDLE_S) and len(full) == 2  # no input for a long while: once a gap
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*before)
