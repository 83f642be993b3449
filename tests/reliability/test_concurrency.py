"""Two trainers on one run directory, a stale lock from a dead process, and several readers of a live run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import make_run, spawn, tmp_leftovers, wait_event, wait_for
from tunedeck.core import runlock, runs
from tunedeck.core.trainer import Trainer

pytestmark = pytest.mark.reliability


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_second_trainer_refused_while_cli_and_follower_see_progress(tmp_path: Path, capsys) -> None:
    run_dir = make_run(tmp_path, "sft", iters=60)
    proc = spawn(run_dir, env={"TUNEDECK_FAULT": "step_sleep:0.15"})
    seen: list[dict] = []
    done = threading.Event()

    def follow() -> None:
        for event in runs.iter_events(run_dir, follow=True, poll=0.05, stop=done.is_set):
            seen.append(event)
            if event["type"] in ("stopped", "done", "error"):
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        assert runs.wait_started(run_dir, proc.pid)
        wait_event(run_dir, lambda e: e["type"] == "step" and e["step"] >= 2)

        # the CLI and the follower thread read the same live run
        (first,) = json.loads(run_cli("runs", str(tmp_path / "runs"), "--json").stdout)
        assert first["status"] == "running" and first["pid"] == proc.pid and first["step"] >= 2
        assert first["total_steps"] == 60 and first["method"] == "sft"
        wait_for(lambda: any(e["type"] == "step" and e["step"] > first["step"] for e in seen), 30,
                 "the follower to see a newer step")
        (second,) = json.loads(run_cli("runs", str(tmp_path / "runs"), "--json").stdout)
        assert second["status"] == "running" and second["step"] > first["step"]

        # a second trainer on the same directory: refused, through the CLI and the engine, nothing touched
        events_before = (run_dir / "events.jsonl").read_bytes()
        r = run_cli("train", "--resume", str(run_dir))
        assert r.returncode == 1 and "already running" in r.stderr and "Traceback" not in r.stderr
        assert Trainer(run_dir, resume=True).run() == 1
        err = capsys.readouterr().err
        assert "in use by another trainer" in err and f"pid {proc.pid}" in err and "tunedeck stop" in err
        assert (run_dir / "events.jsonl").read_bytes()[: len(events_before)] == events_before
        assert runs.read_pid(run_dir) == proc.pid and proc.poll() is None

        r = run_cli("stop", str(run_dir))
        assert r.returncode == 0, r.stderr
        assert proc.wait(30) == 0
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    follower.join(10)
    assert not follower.is_alive()
    steps = [e["step"] for e in seen if e["type"] == "step"]
    assert steps == sorted(steps) and len(steps) >= 3 and seen[-1]["type"] == "stopped"


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "sft", iters=2)
    dead = _dead_pid()
    (run_dir / "lock").write_text(f"{dead}\n")
    # what a killed trainer can leave behind: temp dirs/files and a half-written last event
    (run_dir / "checkpoints" / "step-000002.abc123.tmp").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-000002.abc123.tmp" / "adapters.safetensors").write_bytes(b"\0" * 10)
    (run_dir / "adapters").mkdir()
    (run_dir / "adapters" / ".adapters.safetensors.x1y2.tmp").write_bytes(b"partial")
    (run_dir / ".config.toml.q9.tmp").write_text("[train")
    (run_dir / "events.jsonl").write_text('{"type": "start", "step": 0}\n{"type": "step", "step": 1, "lo')
    assert not runs.is_locked(run_dir) and runs.read_pid(run_dir) == dead
    assert runs.run_info(run_dir).status == "stale"

    assert Trainer(run_dir, resume=True).run() == 0
    events = runs.read_events(run_dir)
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any(f"took over the lock of a dead trainer (pid {dead})" in w for w in warnings), warnings
    removed = [w for w in warnings if "half-written leftover" in w]
    assert len(removed) == 3, warnings
    assert not tmp_leftovers(run_dir)
    # the half-written line was ended, so the first event of the new trainer parses
    assert [e["type"] for e in events][:2] == ["start", "warning"] and events[-1]["type"] == "done"
    raw = (run_dir / "events.jsonl").read_text().splitlines()
    assert raw[1].endswith('"lo') and json.loads(raw[2])["type"] == "warning"
    assert runs.read_pid(run_dir) is None  # released on exit


@pytest.mark.slow
def test_detached_second_trainer_exits_1_with_message(tmp_path: Path) -> None:
    """The detached entry point itself (not only the CLI's check) refuses a locked run directory."""
    run_dir = make_run(tmp_path, "sft", iters=2)
    held = runlock.RunLock(run_dir)
    held.acquire()
    try:
        proc = spawn(run_dir, resume=True)
        assert proc.wait(60) == 1
        log = "\n".join(runs.tail_log(run_dir))
        assert "in use by another trainer" in log and "Traceback" not in log
    finally:
        held.release()
    assert not (run_dir / "events.jsonl").exists()
