"""The run directory as untrusted, shared state: links and FIFOs in it, a removed lock, two `train --run-dir`
started together, and a trainer stopped with SIGSTOP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BIN, run_cli
from tests.reliability.conftest import ENV, make_run, spawn, tiny_config, tree_bytes, wait_event, wait_for
from tunedeck.core import checkpoint_files, runs
from tunedeck.core import config as C

pytestmark = pytest.mark.reliability

VICTIM = b"the user's own file\n"


def _victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


def _listing(root: Path) -> dict[str, dict]:
    r = run_cli("runs", str(root), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    return {Path(i["run_dir"]).name: i for i in json.loads(r.stdout)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lock", "events.jsonl", "train.log"])
@pytest.mark.parametrize("detach", [False, True])
def test_linked_run_file_is_refused_and_its_target_untouched(tmp_path: Path, name: str, detach: bool) -> None:
    run_dir = make_run(tmp_path, "sft", iters=2)
    victim = _victim(tmp_path)
    (run_dir / name).unlink(missing_ok=True)  # prepare_run leaves an empty lock
    (run_dir / name).symlink_to(victim)

    r = run_cli("train", "--resume", str(run_dir), *(["--detach"] if detach else []), env=ENV, timeout=240)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{name} is a symbolic link" in r.stderr and "must be regular files" in r.stderr, r.stderr
    assert victim.read_bytes() == VICTIM and (run_dir / name).is_symlink()

    # the engine's own entry point refuses it too (a spawned trainer, bypassing the CLI's check)
    if name != "train.log":  # spawning opens train.log itself, and refuses a link there (below)
        assert spawn(run_dir, resume=True).wait(120) == 1
        assert victim.read_bytes() == VICTIM
    else:
        with pytest.raises(OSError, match="train.log: is a symbolic link"):
            runs.spawn_detached(run_dir, resume=True)
    info = _listing(tmp_path / "runs")[run_dir.name]
    assert info["status"] == "failed" and f"{name} is a symbolic link" in info["error"]


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize("name, make, kind", [
    ("events.jsonl", _fifo, "a FIFO"), ("lock", _fifo, "a FIFO"), ("train.log", _fifo, "a FIFO"),
    ("events.jsonl", _dev_zero, "a symbolic link"),
])
def test_fifo_or_device_in_a_run_never_blocks_listing_resume_or_the_app(tmp_path: Path, name: str, make,
                                                                         kind: str) -> None:
    run_dir = make_run(tmp_path, "sft", iters=2)
    (run_dir / name).unlink(missing_ok=True)
    make(run_dir / name)

    info = _listing(tmp_path / "runs")[run_dir.name]  # run_cli's timeout: a blocked listing fails the test
    assert info["status"] == "failed" and f"{name} is {kind}" in info["error"], info

    r = run_cli("train", "--resume", str(run_dir), env=ENV, timeout=120)
    assert r.returncode == 1 and f"{name} is {kind}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("stop", str(run_dir), timeout=120)
    assert r.returncode == 1 and "not running" in r.stderr, r.stderr

    # what the app does first: look for a live run to attach to
    probe = "import sys; from pathlib import Path; from tunedeck.core.orchestrate import find_running; " \
            "print(find_running(Path(sys.argv[1])))"
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "runs")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr


@pytest.mark.slow
def test_removed_lock_lets_no_second_trainer_in(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "sft", iters=1000, save_every=2)
    proc = spawn(run_dir, env={"TUNEDECK_FAULT": "step_sleep:0.3"})
    try:
        assert runs.wait_started(run_dir, proc.pid)
        wait_event(run_dir, lambda e: e["type"] == "checkpoint")
        (run_dir / "lock").unlink()

        r = run_cli("train", "--resume", str(run_dir), env=ENV, timeout=240)
        assert r.returncode == 1 and "already running" in r.stderr, r.stderr
        second = spawn(run_dir, resume=True)  # the engine's entry point, bypassing the CLI's check
        assert second.wait(120) == 1
        assert "in use by another trainer" in "\n".join(runs.tail_log(run_dir))

        # the trainer notices at its next event, writes the lock again, and can be stopped as usual
        warning = wait_event(run_dir, lambda e: e["type"] == "warning" and "removed or replaced" in e["message"])
        assert f"pid {proc.pid}" in warning["message"]
        assert runs.read_pid(run_dir) == proc.pid and (run_dir / "lock").is_file()
        r = run_cli("stop", str(run_dir), timeout=240)
        assert r.returncode == 0, r.stderr
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = runs.read_events(run_dir)
    assert events[-1]["type"] == "stopped" and not any(e["type"] == "error" for e in events)
    assert [e["type"] for e in events].count("start") == 1
    latest = checkpoint_files.latest_checkpoint(run_dir)
    assert latest is not None and latest.name == events[-1]["checkpoint"].split("/")[-1]


def _other_config(tmp_path: Path, iters: int) -> Path:
    return tiny_config(tmp_path / f"other-{iters}", "sft", iters=iters)


@pytest.mark.slow
def test_refused_run_dir_changes_nothing(tmp_path: Path) -> None:
    # a run directory prepared by one `train --run-dir X` whose trainer has not started yet
    run_dir = make_run(tmp_path / "a", "sft", iters=2)
    before = tree_bytes(run_dir)
    r = run_cli("train", str(_other_config(tmp_path, 3)), "--run-dir", str(run_dir), env=ENV, timeout=240)
    assert r.returncode == 1 and "already holds a run; use --resume" in r.stderr, r.stderr
    assert tree_bytes(run_dir) == before

    # two `train --run-dir X --detach` started together (relative paths): one trains, the other changes nothing
    ws = tmp_path / "b"
    configs = {n: _other_config(ws, n) for n in (3, 5)}
    procs = {n: subprocess.Popen([str(BIN), "train", str(c.relative_to(ws)), "--run-dir", "runs/x", "--detach"],
                                 cwd=ws, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for n, c in configs.items()}
    outputs = {n: p.communicate(timeout=240) for n, p in procs.items()}
    results = {n: (procs[n].returncode, *outputs[n]) for n in procs}
    (winner,) = [n for n, (code, _, _) in results.items() if code == 0]
    (loser,) = [n for n, (code, _, _) in results.items() if code != 0]
    code, _, err = results[loser]
    assert code == 1 and "Traceback" not in err, err
    assert "already holds a run" in err or "in use by another trainer" in err or "already running" in err, err
    run_dir = ws / "runs" / "x"
    wait_event(run_dir, lambda e: e["type"] == "done", timeout=240)
    cfg, _ = C.load(run_dir / "config.toml")
    assert cfg.train.iters == winner
    (start,) = [e for e in runs.read_events(run_dir) if e["type"] == "start"]
    assert start["total_steps"] == winner


@pytest.mark.slow
def test_stopped_trainer_is_listed_paused(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "sft", iters=1000)
    proc = spawn(run_dir, env={"TUNEDECK_FAULT": "step_sleep:0.2"})
    try:
        assert runs.wait_started(run_dir, proc.pid)
        wait_event(run_dir, lambda e: e["type"] == "step")
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: _listing(tmp_path / "runs")[run_dir.name]["status"] == "paused", 120, "status paused")
        info = _listing(tmp_path / "runs")[run_dir.name]
        assert info["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: _listing(tmp_path / "runs")[run_dir.name]["status"] == "running", 120, "status running")
        os.kill(proc.pid, signal.SIGSTOP)  # `tunedeck stop` on a paused trainer: it is continued to checkpoint
        wait_for(lambda: runs.process_stopped(proc.pid), 120, "the trainer to stop")
        r = run_cli("stop", str(run_dir), timeout=240)
        assert r.returncode == 0, r.stderr
        assert proc.wait(120) == 0 and runs.read_events(run_dir)[-1]["type"] == "stopped"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
