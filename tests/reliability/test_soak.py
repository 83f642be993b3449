"""Soak: a detached run of >= 1,000 steps on the demo model with a tiny config, followed live.

The trainer's RSS (sampled with psutil) stays flat after warm-up, the follower's memory is bounded,
train.log does not grow per step (the detached trainer writes nothing there per step), events.jsonl
grows by a bounded amount per step, and `runs` reads a long event log in constant memory.
TUNEDECK_SOAK_STEPS sets the length (default 1000; e.g. 200000 for an overnight soak).
"""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest

from tests.reliability.conftest import make_run, spawn
from tunedeck.core import config as C
from tunedeck.core import runs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

STEPS = int(os.environ.get("TUNEDECK_SOAK_STEPS", "1000"))
MB = 2**20


def _short_examples(path: Path, n: int = 64) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"note {i}?"},
                                                  {"role": "assistant", "content": f"saved {i}."}]}) + "\n")


def test_soak_memory_and_logs_stay_bounded(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "sft", iters=STEPS, save_every=max(STEPS // 4, 1), warmup_steps=10,
                       learning_rate=1e-4)
    data = tmp_path / "short.jsonl"
    _short_examples(data)
    cfg, _ = C.load(run_dir / "config.toml")
    cfg.data.path = str(data)
    cfg.data.valid_fraction = 0.0
    C.save(cfg, run_dir / "config.toml")

    me = psutil.Process()
    seen = {"step": 0, "events": 0, "last": ""}
    stop = threading.Event()

    def follow() -> None:  # keeps nothing but counters: its memory must not grow with the run
        for event in runs.iter_events(run_dir, follow=True, poll=0.1, stop=stop.is_set):
            seen["events"] += 1
            seen["last"] = event["type"]
            if event["type"] == "step":
                seen["step"] = event["step"]
            if event["type"] in ("done", "error", "stopped"):
                return

    follower = threading.Thread(target=follow, daemon=True)
    t0 = time.monotonic()
    proc = spawn(run_dir)
    follower.start()
    trainer = psutil.Process(proc.pid)
    samples: list[tuple[int, int, int]] = []  # (step, trainer RSS, this process's RSS)
    try:
        while proc.poll() is None:
            try:
                samples.append((seen["step"], trainer.memory_info().rss, me.memory_info().rss))
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() - t0 < 600, f"soak too slow: step {seen['step']} after 600 s"
            time.sleep(0.2)
        assert proc.wait(30) == 0, runs.tail_log(run_dir)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    follower.join(10)
    elapsed = time.monotonic() - t0

    assert seen["last"] == "done" and seen["step"] == STEPS
    after = [s for s in samples if s[0] >= 100]
    assert len(after) >= 5, samples[-3:]
    trainer_drift = max(s[1] for s in after) - after[0][1]
    follower_drift = max(s[2] for s in after) - after[0][2]
    log_bytes = (run_dir / "train.log").stat().st_size
    events_bytes = (run_dir / "events.jsonl").stat().st_size
    print(f"\nsoak: {STEPS} steps in {elapsed:.1f} s; trainer RSS {after[0][1] / MB:.0f} MB at step "
          f"{after[0][0]}, drift {trainer_drift / MB:+.1f} MB to the end; follower process drift "
          f"{follower_drift / MB:+.1f} MB; train.log {log_bytes} B; events.jsonl {events_bytes / STEPS:.0f} B/step")
    assert trainer_drift < 50 * MB
    assert follower_drift < 50 * MB
    assert log_bytes < 4096  # start-up notices only: nothing per step
    assert events_bytes / STEPS < 1024

    # a long event log is summarised in constant memory (streamed in 64 KB chunks, not loaded as a list)
    def peak_of(fn):
        tracemalloc.start()
        try:
            result = fn()
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    info, peak = peak_of(lambda: runs.run_info(run_dir))
    _, list_peak = peak_of(lambda: runs.read_events(run_dir))
    print(f"soak: run_info peak {peak / 1024:.0f} KB (the whole event list: {list_peak / 1024:.0f} KB)")
    assert info.status == "finished" and info.step == STEPS
    assert peak < 1 * MB and (STEPS < 1000 or peak < list_peak / 2)
