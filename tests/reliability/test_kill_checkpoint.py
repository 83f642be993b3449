"""kill -9 at every point of a checkpoint write, then resume: the newest verified checkpoint is found,
half-written leftovers are removed (with a warning), training finishes and the adapter loads.

TUNEDECK_FAULT=ckpt_pause:S makes the trainer print `ckpt-wrote NAME` to train.log after each step of
a checkpoint (each file in the temp dir, the rename, the `latest` update, each adapters/ file) and
sleep S seconds: the test kills it inside that window. The kills are chained on one run (each resume
is the next victim) so that the whole sequence costs one process start per kill point.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import mlx.core as mx
import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import ENV, make_run, spawn, tmp_leftovers, wait_unlocked
from tunedeck.core import checkpoint_files, runs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PAUSE = 0.15
INSIDE_TMP = ("adapters.safetensors", "optimizer.safetensors", "state.json", "manifest.json")
# (name printed after that step, whether the checkpoint being written is committed by then)
WINDOWS = [
    ("adapters.safetensors", False),  # first checkpoint of the run: nothing verified yet
    ("renamed", True),  # renamed into place, `latest` not updated yet
    ("adapters.safetensors", False),  # 1st file of the temp dir
    ("optimizer.safetensors", False),  # 2nd
    ("state.json", False),  # 3rd
    ("manifest.json", False),  # 4th (written last), before the rename
    ("latest", True),  # `latest` updated, adapters/ not yet refreshed
    ("adapters/adapter_config.json", True),  # during the adapters/ publish: 1st file replaced
    ("adapters/adapters.safetensors", True),  # both replaced, before the checkpoint event
]


def _ckpt_lines(log: Path, offset: int) -> list[str]:
    text = log.read_bytes()[offset:].decode("utf-8", "replace")
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("ckpt-wrote ")]


def _kill_at(run_dir: Path, target: str, resume: bool) -> tuple[bool, dict, list[str]]:
    """Start a detached trainer, SIGKILL it right after `target` is printed.

    Returns (whether the kill fell in that window, its start event, the warnings it gave before starting).
    """
    log = run_dir / "train.log"
    offset = log.stat().st_size if log.exists() else 0
    starts_before = sum(1 for e in runs.read_events(run_dir) if e["type"] == "start")
    proc = spawn(run_dir, resume=resume, env={"TUNEDECK_FAULT": f"ckpt_pause:{PAUSE}"})
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith(target) for line in _ckpt_lines(log, offset)):
            assert proc.poll() is None, f"trainer exited ({proc.returncode}): {runs.tail_log(run_dir)}"
            assert time.monotonic() < deadline, f"never reached {target}: {runs.tail_log(run_dir)}"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    wait_unlocked(run_dir)
    on_time = _ckpt_lines(log, offset)[-1].startswith(target)  # nothing later was printed before the kill
    events = runs.read_events(run_dir)
    starts = [i for i, e in enumerate(events) if e["type"] == "start"]
    begin = starts[starts_before - 1] + 1 if starts_before else 0
    warnings = [e["message"] for e in events[begin : starts[starts_before]] if e["type"] == "warning"]
    return on_time, events[starts[starts_before]], warnings


def _adapters_consistent(run_dir: Path) -> None:
    """adapters/ is either absent or two complete files (each replaced atomically)."""
    adir = run_dir / "adapters"
    if (adir / "adapters.safetensors").exists():  # what chat/eval/mlx_lm use; else they fall back to a checkpoint
        assert mx.load(str(adir / "adapters.safetensors"))
        assert json.loads((adir / "adapter_config.json").read_text())["fine_tune_type"] == "lora"


def test_kill9_at_every_checkpoint_step_then_resume(tmp_path: Path, demo_model: Path) -> None:
    import mlx_lm

    iters = 12
    run_dir = make_run(tmp_path, "sft", iters=iters, save_every=2)
    committed: str | None = None  # newest checkpoint that must survive
    pending_warning = False  # a half-written temp dir was left: the next start must report removing it
    hit: list[str] = []
    todo = list(WINDOWS)
    attempts = 0
    while todo:
        attempts += 1
        assert attempts <= len(WINDOWS) + 6, f"too many late kills; hit {hit}"
        target, commits = todo[0]
        on_time, start, warnings = _kill_at(run_dir, target, resume=attempts > 1)
        # what this process started from: the newest verified checkpoint at the time
        assert start["resumed_from"] == committed, (start, committed)
        if attempts > 1:
            assert any("dead trainer" in w for w in warnings), warnings
            assert pending_warning == any("half-written leftover" in w for w in warnings), (pending_warning, warnings)
        # the state the kill left behind
        newest = checkpoint_files.latest_checkpoint(run_dir)
        leftovers = tmp_leftovers(run_dir)
        _adapters_consistent(run_dir)
        if on_time:
            todo.pop(0)
            hit.append(target)
            if commits:
                assert newest is not None and newest.name != committed and not leftovers, (newest, leftovers)
            else:
                assert (newest.name if newest else None) == committed
                assert any(p.parent.name == "checkpoints" and p.is_dir() for p in leftovers), leftovers
            if target == "renamed":  # the kill fell between the rename and the `latest` update
                latest = run_dir / "checkpoints" / "latest"
                assert not latest.exists() or latest.read_text().strip() != newest.name
        committed = newest.name if newest else None
        pending_warning = bool(leftovers)

    # the user's resume: the CLI, foreground, to the end
    r = run_cli("train", "--resume", str(run_dir), "--quiet", env=ENV, timeout=180)
    assert r.returncode == 0, r.stderr
    events = runs.read_events(run_dir)
    last_start = [e for e in events if e["type"] == "start"][-1]
    assert last_start["resumed_from"] == committed
    assert events[-1]["type"] == "done" and events[-1]["step"] == iters
    assert not tmp_leftovers(run_dir)
    assert checkpoint_files.verify_checkpoint(run_dir / "checkpoints" / f"step-{iters:06d}")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{iters:06d}"
    model, tok = mlx_lm.load(str(demo_model), adapter_path=str(run_dir / "adapters"))
    assert isinstance(mlx_lm.generate(model, tok, prompt="hi", max_tokens=2), str)
    print(f"\nkill -9 points survived: {len(hit)} distinct windows, {attempts} kills in all ({hit})")
    assert len(hit) == len(WINDOWS)
