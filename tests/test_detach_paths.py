"""Detached trainers started with relative paths, and a detached trainer that dies before it starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for
from tests.reliability.conftest import ENV, make_run, spawn, tiny_config
from tunedeck.core import config as C

pytestmark = pytest.mark.slow


def _relative_workspace(root: Path) -> Path:
    """root/ws with a tiny config whose data.path is relative to the config's directory."""
    config = tiny_config(root / "ws", "sft", iters=2)
    cfg, _ = C.load(config)
    cfg.data.path = "data.jsonl"
    C.save(cfg, config)
    return config


def _done(run_dir: Path, count: int = 1) -> None:
    """Wait until the run holds `count` done events."""
    wait_for(run_dir, lambda e: e["type"] == "done" and (count == 1 or e["step"] >= count), timeout=240)


def test_detach_with_relative_paths_reaches_done(tmp_path: Path) -> None:
    _relative_workspace(tmp_path)
    ws = tmp_path / "ws"

    r = run_cli("train", "ws/tunedeck.toml", "--detach", cwd=tmp_path, env=ENV)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    first = Path(r.stdout.strip())
    assert not first.is_absolute()
    _done(tmp_path / first)

    r = run_cli("train", "tunedeck.toml", "--run-dir", "runs/x", "--detach", cwd=ws, env=ENV)
    assert r.returncode == 0 and r.stdout.strip() == "runs/x", r.stderr
    _done(ws / "runs" / "x")

    r = run_cli("train", "--resume", "runs/x", "--detach", "--set", "train.iters=3", cwd=ws, env=ENV)
    assert r.returncode == 0, r.stderr
    _done(ws / "runs" / "x", count=3)

    r = run_cli("train", "tunedeck.toml", "--run-dir", "runs/w", "--workers", "2", "--detach", cwd=ws, env=ENV)
    assert r.returncode == 0, r.stderr
    _done(ws / "runs" / "w")

    listed = {Path(i["run_dir"]).name: i for i in json.loads(run_cli("runs", "ws/runs", "--json", cwd=tmp_path).stdout)}
    assert {i["status"] for i in listed.values()} == {"finished"}
    assert listed["x"]["step"] == 3 and listed["w"]["workers"] == 2


def test_trainer_that_dies_at_start_is_listed_failed_with_the_log_reason(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "sft")
    (run_dir / "config.toml").write_text("[train\n", encoding="utf-8")  # the trainer cannot even read its config
    proc = spawn(run_dir)
    assert proc.wait(120) != 0
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "config.toml" in log and not (run_dir / "events.jsonl").exists()

    (info,) = json.loads(run_cli("runs", str(tmp_path / "runs"), "--json").stdout)
    assert info["status"] == "failed", info
    assert info["error"].startswith("the trainer exited before it started: ") and "config.toml" in info["error"]
    last = [line.strip() for line in log.splitlines() if line.strip()][-1]
    assert info["error"].endswith(last)
