"""`tunedeck train` whose output goes away mid-run: a pipe closed early (`2>&1 | head -3`) or a terminal
that disappears (writes fail with EIO). The display goes quiet, training finishes, and the command exits
with the training's status."""

from __future__ import annotations

import os
import select
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.reliability.conftest import ENV, tiny_config, wait_for
from tunedeck.core import runs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TIMEOUT = 300


def _run_dir(workspace: Path) -> Path:
    (run_dir,) = (workspace / "runs").iterdir()
    return run_dir


def _events(workspace: Path) -> list[dict]:
    """The events of the workspace's run, once it has one."""
    found = list((workspace / "runs").glob("*/events.jsonl"))
    return runs.read_events(found[0].parent) if found else []


def _head(config: Path, lines: int, fault: str = "") -> tuple[int, list[str]]:
    """`tunedeck train CONFIG 2>&1 | head -LINES`: read that many lines, close the pipe, wait for the exit."""
    env = {**os.environ, **ENV, "TUNEDECK_FAULT": fault}
    proc = subprocess.Popen([str(BIN), "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=config.parent)
    try:
        assert proc.stdout is not None
        got = [proc.stdout.readline().decode() for _ in range(lines)]
        proc.stdout.close()
        return proc.wait(timeout=TIMEOUT), got
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_pipe_closed_early_does_not_stop_training(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "kto", iters=6)
    code, got = _head(config, 3)
    assert len(got) == 3
    run_dir = _run_dir(tmp_path)
    events = runs.read_events(run_dir)
    assert code == 0, runs.tail_log(run_dir)
    assert events[-1]["type"] == "done" and events[-1]["step"] == 6
    assert "error" not in [e["type"] for e in events]


def test_with_a_closed_pipe_the_exit_status_is_the_trainings(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "sft", iters=6)
    code, _ = _head(config, 3, fault="nan_loss:4")
    events = runs.read_events(_run_dir(tmp_path))
    assert events[-1]["type"] == "error" and events[-1]["kind"] == "nan" and events[-1]["step"] == 4
    assert code == 1


def test_a_terminal_that_disappears_does_not_stop_training(tmp_path: Path) -> None:
    """The output is a pseudo-terminal (not the process's controlling one: no SIGHUP) whose master side is
    closed once training is under way (the reference pass has begun), so every later write fails with EIO."""
    config = tiny_config(tmp_path, "kto", iters=6)
    master, slave = os.openpty()
    proc = subprocess.Popen([str(BIN), "train", str(config)], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env={**os.environ, **ENV, "TUNEDECK_FAULT": "ref_sleep:0.2"},
                            cwd=tmp_path)
    os.close(slave)
    stop = threading.Event()

    def drain() -> None:  # read the terminal as a terminal emulator would, until it goes away
        while not stop.is_set():
            if select.select([master], [], [], 0.05)[0] and not os.read(master, 4096):
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(e["type"] == "reference" for e in _events(tmp_path)), TIMEOUT, "the reference pass")
        stop.set()
        reader.join()
        os.close(master)  # the terminal is gone
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run_dir = _run_dir(tmp_path)
    events = runs.read_events(run_dir)
    assert code == 0, runs.tail_log(run_dir)
    assert events[-1]["type"] == "done" and events[-1]["step"] == 6
