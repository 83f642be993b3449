"""SIGINT/SIGTERM to a foreground `tunedeck train` and to a detached trainer: checkpoint, `stopped`, exit 0
within a bounded time; a second signal exits at once with a non-zero status.

Steps are slowed with TUNEDECK_FAULT=step_sleep so that a signal lands mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.reliability.conftest import ENV, make_run, spawn, tiny_config, wait_event, wait_for, wait_unlocked
from tunedeck.core import checkpoint_files, runs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

STOP_LIMIT = 30.0  # seconds from the signal to the process's exit


def _foreground(workspace: Path, sleep: float) -> tuple[subprocess.Popen, Path]:
    config = tiny_config(workspace, "sft", iters=40)
    proc = subprocess.Popen([str(BIN), "train", str(config), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV, "TUNEDECK_FAULT": f"step_sleep:{sleep}"})
    run_dir = wait_for(lambda: next((workspace / "runs").glob("*"), None) if (workspace / "runs").is_dir() else None,
                       60, "the run directory")
    return proc, run_dir


def _assert_stopped(run_dir: Path, sig: signal.Signals) -> None:
    events = runs.read_events(run_dir)
    stopped = events[-1]
    assert stopped["type"] == "stopped" and stopped["signal"] == sig.name, events[-3:]
    k = stopped["step"]
    assert 1 <= k < 40
    assert stopped["checkpoint"] == f"checkpoints/step-{k:06d}"
    assert checkpoint_files.latest_checkpoint(run_dir).name == f"step-{k:06d}"
    assert runs.run_info(run_dir).status == "stopped"
    assert not runs.is_locked(run_dir)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_foreground_signal_checkpoints_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    proc, run_dir = _foreground(tmp_path, 0.2)
    try:
        wait_event(run_dir, lambda e: e["type"] == "step" and e["step"] >= 1)
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=STOP_LIMIT + 5)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert elapsed < STOP_LIMIT
    assert "Traceback" not in err
    assert out.strip() == str(run_dir)
    _assert_stopped(run_dir, sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_detached_signal_checkpoints_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = make_run(tmp_path, "sft", iters=40)
    proc = spawn(run_dir, env={"TUNEDECK_FAULT": "step_sleep:0.2"})
    try:
        assert runs.wait_started(run_dir, proc.pid)
        wait_event(run_dir, lambda e: e["type"] == "step" and e["step"] >= 1)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(STOP_LIMIT + 5)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, runs.tail_log(run_dir)
    assert elapsed < STOP_LIMIT
    assert "Traceback" not in "\n".join(runs.tail_log(run_dir, 200))
    _assert_stopped(run_dir, sig)


@pytest.mark.parametrize("mode", ["foreground", "detached"])
def test_second_signal_exits_at_once(tmp_path: Path, mode: str) -> None:
    """The first signal asks for a checkpoint at the end of the (slow) step; the second one does not wait."""
    if mode == "foreground":
        proc, run_dir = _foreground(tmp_path, 3.0)
    else:
        run_dir = make_run(tmp_path, "sft", iters=40)
        proc = spawn(run_dir, env={"TUNEDECK_FAULT": "step_sleep:3.0"})
    first, second = (signal.SIGINT, signal.SIGINT) if mode == "foreground" else (signal.SIGTERM, signal.SIGTERM)
    try:
        wait_event(run_dir, lambda e: e["type"] == "start")
        time.sleep(0.5)  # inside the first step's sleep
        proc.send_signal(first)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(second)
        code = proc.wait(10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0 and elapsed < 2.0, (code, elapsed)
    assert code in (128 + second, -second)
    wait_unlocked(run_dir)
    assert not any(e["type"] in ("stopped", "done") for e in runs.read_events(run_dir))
    assert runs.run_info(run_dir).status == "stale"
