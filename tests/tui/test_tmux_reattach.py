"""Disconnect-proof: the real `tunedeck` in tmux starts a run, quits, and re-attaches when re-opened."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import BIN, run_cli
from tests.conftest import wait_until as wait
from tests.tui.conftest import make_train_workspace as make_workspace
from tunedeck.core import runs
from tunedeck.core.orchestrate import find_running

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]
ENV_KEYS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "PATH")




def test_quit_leaves_the_run_training_and_reopening_reattaches(tmp_path: Path, demo_model: Path) -> None:
    ws = make_workspace(tmp_path / "ws", method="sft", iters=5000, save_every=100_000, eval_every=100_000)
    tmux = ["tmux", "-L", f"tunedeck-test-{os.getpid()}", "-f", "/dev/null"]
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KEYS if k in os.environ)
    command = f"cd {shlex.quote(str(ws))} && exec env {env} TERM=xterm-256color {shlex.quote(str(BIN))}"

    def start(session: str) -> None:
        subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], check=True)

    def screen(session: str) -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def keys(session: str, *names: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", session, *names], check=True)

    def press_until(session: str, key: str, shown: Callable[[str], object], timeout: float, what: str) -> None:
        """Press `key` (again every few seconds: the app may still be starting) until `shown(screen)`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            keys(session, key)
            try:
                return wait(lambda: shown(screen(session)), 3, what)
            except AssertionError:
                continue
        raise AssertionError(f"timed out waiting for {what}")

    def alive(session: str) -> bool:
        return subprocess.run([*tmux, "has-session", "-t", session], capture_output=True).returncode == 0

    run_dir: Path | None = None
    try:
        start("first")
        press_until("first", "3", lambda text: "No run attached" in text, 60, "the Train screen")
        keys("first", "C-r")
        wait(lambda: find_running(ws / "runs"), 60, "a trainer to start")
        run_dir = find_running(ws / "runs")
        assert run_dir is not None
        wait(lambda: re.search(r"step [1-9]\d*/5000", screen("first")), 90, "step events on screen")
        pid = runs.read_pid(run_dir)
        keys("first", "C-q")
        wait(lambda: not alive("first"), 30, "the app to quit")

        assert pid is not None and psutil.pid_exists(pid) and runs.is_locked(run_dir)
        events = run_dir / "events.jsonl"
        size = events.stat().st_size
        wait(lambda: events.stat().st_size > size, 30, "events to keep coming after the app quit")

        start("second")
        press_until("second", "3", lambda text: run_dir.name in text and re.search(r"step [1-9]\d*/5000", text),
                    60, "the re-opened app to attach to the run")
        keys("second", "C-q")
        wait(lambda: not alive("second"), 30, "the app to quit again")
        r = run_cli("stop", str(run_dir), timeout=120)
        assert r.returncode == 0 and "stopped" in r.stdout, r.stderr
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        if run_dir is not None and runs.is_locked(run_dir):
            runs.stop_run(run_dir, timeout=60)
