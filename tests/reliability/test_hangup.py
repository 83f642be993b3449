"""SIGHUP (the SSH link drops, the terminal closes) never stops training: a `warning` event says so, the
progress display stops, what the process would print goes to train.log, and the run goes on to `done`.

The foreground trainer runs in its own session with a pseudo-terminal as its controlling terminal
(stdin, stdout and stderr); closing the pty's master side is what sshd does when the link drops: the
kernel hangs the terminal up (writes to it fail with EIO) and sends SIGHUP to the session leader. The
test sends SIGHUP as well, as a shell does to its jobs when it is hung up. Steps are slowed with
TUNEDECK_FAULT=step_sleep so that the hang-up lands mid-run.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import termios
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.reliability.conftest import ENV, make_run, spawn, tiny_config, wait_event, wait_for
from tunedeck.core import checkpoint_files, runs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

ITERS = 12


def _controlling_terminal() -> None:
    """In the child, after setsid: make the pty on stdin the new session's controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _drain(fd: int) -> bytes:
    """What the terminal has been sent so far (the pty's master side, read without blocking)."""
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except (BlockingIOError, OSError):
            return out
        if not chunk:
            return out
        out += chunk


def _hangups(run_dir: Path) -> list[dict]:
    return [e for e in runs.read_events(run_dir) if e["type"] == "warning" and e.get("signal") == "SIGHUP"]


def test_sighup_keeps_a_foreground_run_training_to_done(tmp_path: Path, demo_model: Path) -> None:
    config = tiny_config(tmp_path, "sft", iters=ITERS, save_every=4)
    master, slave = os.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen([str(BIN), "train", str(config)], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=_controlling_terminal,
                            env={**os.environ, **ENV, "TUNEDECK_FAULT": "step_sleep:0.3"})
    os.close(slave)
    shown = b""
    try:
        def second_step() -> Path | None:  # keeps reading the terminal, so that its buffer never fills
            nonlocal shown
            shown += _drain(master)
            assert proc.poll() is None, f"train exited ({proc.returncode}): {shown.decode(errors='replace')}"
            found = next((tmp_path / "runs").glob("*"), None) if (tmp_path / "runs").is_dir() else None
            done = found and any(e["type"] == "step" and e["step"] >= 2 for e in runs.read_events(found))
            return found if done else None

        run_dir = wait_for(second_step, 180, "the second step")
        shown += _drain(master)
        os.close(master)  # the link drops
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"step 2/12" in shown  # the progress bar was on the terminal until then
    assert code == 0, runs.tail_log(run_dir)
    (hup,) = _hangups(run_dir)
    assert "training continues" in hup["message"] and hup["step"] < ITERS
    events = runs.read_events(run_dir)
    assert events[-1]["type"] == "done" and events[-1]["step"] == ITERS, events[-3:]
    assert not any(e["type"] in ("stopped", "error") for e in events)
    assert checkpoint_files.verify_checkpoint(run_dir / "checkpoints" / f"step-{ITERS:06d}")
    assert (run_dir / "adapters" / "adapters.safetensors").is_file()
    log = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    assert log.strip().splitlines()[-1] == str(run_dir)  # the CLI's last line went to train.log
    assert "Traceback" not in log


def test_sighup_to_a_detached_run_does_not_stop_it_but_sigterm_still_does(tmp_path: Path, demo_model: Path) -> None:
    run_dir = make_run(tmp_path, "sft", iters=40)
    proc = spawn(run_dir, env={"TUNEDECK_FAULT": "step_sleep:0.2"})
    try:
        assert runs.wait_started(run_dir, proc.pid)
        wait_event(run_dir, lambda e: e["type"] == "step" and e["step"] >= 1)
        proc.send_signal(signal.SIGHUP)
        hup = wait_event(run_dir, lambda e: e["type"] == "warning" and e.get("signal") == "SIGHUP")
        wait_event(run_dir, lambda e: e["type"] == "step" and e["step"] > hup["step"] + 1)  # still training
        proc.send_signal(signal.SIGTERM)  # a hang-up is not a first stop signal: this one checkpoints
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, runs.tail_log(run_dir)
    stopped = runs.read_events(run_dir)[-1]
    assert stopped["type"] == "stopped" and stopped["signal"] == "SIGTERM"
    assert checkpoint_files.latest_checkpoint(run_dir).name == f"step-{stopped['step']:06d}"
