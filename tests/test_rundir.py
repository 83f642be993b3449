"""A run directory as a value (core.rundir) and the run orchestration shared by the CLI and the app
(core.orchestrate): what makes a directory a run, its checkpoints in order, the cached listing, the live run,
and a detached trainer that exits at start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.conftest import tiny_config
from tunedeck.core import checkpoint_files, orchestrate, runlock, runs
from tunedeck.core import config as C
from tunedeck.core.rundir import RunDir


def _checkpoint(run_dir: Path, name: str) -> Path:
    """A checkpoint directory with one file and a manifest that verifies."""
    ckpt = run_dir / "checkpoints" / name
    ckpt.mkdir(parents=True)
    (ckpt / "adapters.safetensors").write_bytes(name.encode())
    checkpoint_files.write_manifest(ckpt)
    return ckpt


def test_a_config_toml_entry_makes_a_run_even_a_damaged_one(tmp_path: Path) -> None:
    """One definition for the CLI's listing and the app's screens: a linked or FIFO config.toml is still a
    run (listed failed, naming it), never followed or read."""
    cases = {"plain": lambda p: p.write_text("x = 1\n"), "dangling-link": lambda p: p.symlink_to(tmp_path / "gone"),
             "fifo": os.mkfifo}
    for name, make in cases.items():
        (tmp_path / name).mkdir()
        make(tmp_path / name / "config.toml")
        assert RunDir(tmp_path / name).is_run(), name
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    assert not RunDir(tmp_path / "empty").is_run() and not RunDir(tmp_path / "file").is_run()
    listed = {i.run_dir.name: i for i in runs.list_runs(tmp_path)}
    assert sorted(listed) == ["dangling-link", "fifo", "plain"]
    assert listed["fifo"].status == "failed" and "config.toml is a FIFO" in listed["fifo"].error
    assert RunDir(tmp_path / "fifo").problems() == ["config.toml is a FIFO"]


def test_checkpoints_newest_first_by_step_number(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for name in ("step-000009", "step-000010", "step-999999", "step-1000000"):
        _checkpoint(run_dir, name)
    for name in ("step-000011.tmp", "corrupt-step-000012-20260101-000000", "step-x"):
        (run_dir / "checkpoints" / name).mkdir()
    (run_dir / "checkpoints" / "step-000013").write_text("a file in place of a checkpoint")
    (run_dir / "checkpoints" / "latest").write_text("step-1000000\n")
    rd = RunDir(run_dir)
    assert [p.name for p in rd.checkpoints()] == ["step-1000000", "step-999999", "step-000013", "step-000010",
                                                  "step-000009"]
    assert [p.name for p in rd.checkpoint_dirs()] == ["step-1000000", "step-999999", "step-000010", "step-000009"]
    assert checkpoint_files.latest_checkpoint(run_dir).name == "step-1000000"  # by number: a name sort put step-999999 first
    (run_dir / "checkpoints" / "step-1000000" / "adapters.safetensors").write_bytes(b"damaged")
    assert checkpoint_files.latest_checkpoint(run_dir).name == "step-999999"


def test_a_linked_checkpoints_directory_is_not_looked_into(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _checkpoint(elsewhere, "step-000004")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(elsewhere / "checkpoints")
    rd = RunDir(tmp_path / "run")
    assert rd.checkpoints() == [] and checkpoint_files.latest_checkpoint(rd.path) is None
    assert rd.problems() == ["checkpoints is a symbolic link, not a directory"]


def test_the_cached_listing_reads_a_run_again_only_when_its_events_change(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(C.Config().to_toml())
    writer = runs.EventWriter(run_dir)
    writer.emit("warning", 0, message="first")
    cache: runs.RunsCache = {}
    (first,) = runs.list_runs(tmp_path / "runs", cache)
    (again,) = runs.list_runs(tmp_path / "runs", cache)
    assert again is first and first.status == "stale"
    writer.emit("error", 0, message="boom", kind="io")
    writer.close()
    (changed,) = runs.list_runs(tmp_path / "runs", cache)
    assert changed is not first and changed.status == "failed" and changed.error == "boom"
    assert [i.to_json() for i in runs.list_runs(tmp_path / "runs")] == [changed.to_json()]


def test_find_running_needs_a_live_trainer(tmp_path: Path) -> None:
    assert orchestrate.find_running(tmp_path / "missing") is None
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text(C.Config().to_toml())
    assert orchestrate.find_running(tmp_path) is None
    lock = runlock.RunLock(tmp_path / "a")
    lock.acquire()
    try:
        assert orchestrate.find_running(tmp_path) == tmp_path / "a"
    finally:
        lock.release()


@pytest.mark.slow
def test_a_detached_trainer_that_exits_at_start_is_reported_with_the_log_tail(tmp_path: Path) -> None:
    from tunedeck.core.run_prep import prepare_run

    config = tiny_config(tmp_path, "sft")
    run_dir = prepare_run(C.load(config)[0], config, tmp_path / "runs")
    (run_dir / "config.toml").write_text("[train\n", encoding="utf-8")  # the trainer cannot read its config
    outcome = orchestrate.detach(run_dir, timeout=120)
    assert not outcome.started and outcome.pid > 0 and outcome.log_tail
    assert outcome.log_tail == tuple(runs.tail_log(run_dir, orchestrate.LOG_TAIL))
    assert "config.toml" in "\n".join(outcome.log_tail)
    assert outcome.failure.startswith(f"training exited at start; {run_dir / 'train.log'}:\n")
    assert outcome.failure.endswith(outcome.log_tail[-1])
    assert not runs.is_locked(run_dir)
