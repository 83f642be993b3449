"""The training engine end to end: real MLX on the demo model, real run directories and processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.conftest import run_cli, small_config, wait_for
from tunedeck.core import checkpoint_files, reference, runlock, runs
from tunedeck.core import config as C
from tunedeck.core.run_prep import prepare_run
from tunedeck.core.trainer import Trainer


def start(config: Path, **overrides: object) -> Path:
    cfg, _ = C.load(config)
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return prepare_run(cfg, config, config.parent / "runs")


def train_in_process(config: Path, **overrides: object) -> tuple[Path, int]:
    run_dir = start(config, **overrides)
    return run_dir, Trainer(run_dir).run()


def steps(run_dir: Path) -> dict[int, tuple[float, float]]:
    return {e["step"]: (e["loss"], e["lr"]) for e in runs.read_events(run_dir) if e["type"] == "step"}


def adapter(run_dir: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(run_dir / "adapters" / "adapters.safetensors")).items()}


@pytest.mark.parametrize("method", ["kto", "sft"])
def test_short_run_learns_and_adapters_load(tmp_path: Path, demo_model: Path, method: str) -> None:
    import mlx_lm

    config = small_config(tmp_path, method, iters=10, eval_every=10, save_every=5)
    run_dir, code = train_in_process(config)
    assert code == 0
    events = runs.read_events(run_dir)
    kinds = [e["type"] for e in events]
    # data warnings and the KTO reference pass's progress precede the start
    assert set(kinds[: kinds.index("start")]) <= {"warning", "reference"}
    assert kinds[-1] == "done" and kinds.count("step") == 10
    assert [e["path"] for e in events if e["type"] == "checkpoint"] == ["checkpoints/step-000005", "checkpoints/step-000010"]
    evals = [e["val_loss"] for e in events if e["type"] == "eval"]
    assert evals[-1] < evals[0]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    step = next(e for e in events if e["type"] == "step")
    for key in ("loss", "lr", "tokens", "tokens_per_sec", "peak_memory_gb", "rss_gb", "mlx_active_gb", "sys_available_gb"):
        assert key in step
    if method == "kto":
        for key in ("rewards_chosen", "rewards_rejected", "margin", "kl"):
            assert key in step
        assert step["rewards_chosen"] == pytest.approx(0, abs=1e-3)  # policy == reference before the first update
    else:
        assert any(e["type"] == "warning" and "undesirable set aside" in e["message"] for e in events)
    model, tok = mlx_lm.load(str(demo_model), adapter_path=str(run_dir / "adapters"))
    assert isinstance(mlx_lm.generate(model, tok, prompt="hello", max_tokens=4), str)
    assert runs.run_info(run_dir).status == "finished"
    cfg = json.loads((run_dir / "adapters" / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and "self_attn.q_proj" in cfg["lora_parameters"]["keys"]


def test_mlx_lm_generate_cli_loads_the_adapter(tmp_path: Path, demo_model: Path) -> None:
    run_dir, code = train_in_process(small_config(tmp_path, "kto", iters=2, save_every=2, eval_every=2))
    assert code == 0
    r = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(demo_model), "--adapter-path",
                        str(run_dir / "adapters"), "--prompt", "hi", "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_reference_logps_computed_once(tmp_path: Path, monkeypatch, demo_model: Path) -> None:
    calls: list[int] = []
    real = reference.compute_set

    def counting(model, seqs, batch_size, *args, **kwargs):
        calls.append(len(seqs))
        return real(model, seqs, batch_size, *args, **kwargs)

    monkeypatch.setattr(reference, "compute_set", counting)
    run_dir, code = train_in_process(small_config(tmp_path, "kto", iters=4))
    assert code == 0
    # the training and validation splits (each example with its KL pair): 2 passes before step 1, none per step
    assert len(calls) == 2 and sum(calls) == 64
    start_event = next(e for e in runs.read_events(run_dir) if e["type"] == "start")
    assert start_event["reference_cached"] is False
    cfg, _ = C.load(run_dir / "config.toml", ["train.iters=6"])
    C.save(cfg, run_dir / "config.toml")
    assert Trainer(run_dir, resume=True).run() == 0
    assert len(calls) == 2  # the resumed run reads the cache
    assert [e for e in runs.read_events(run_dir) if e["type"] == "start"][-1]["reference_cached"] is True


def test_lock_refuses_a_second_trainer(tmp_path: Path, capsys) -> None:
    run_dir = start(small_config(tmp_path))
    held = runlock.RunLock(run_dir)
    held.acquire()
    try:
        assert runs.is_locked(run_dir)
        assert Trainer(run_dir).run() == 1
        assert "in use by another trainer" in capsys.readouterr().err
        r = run_cli("train", "--resume", str(run_dir))
        assert r.returncode == 1 and "already running" in r.stderr
    finally:
        held.release()
    assert not runs.is_locked(run_dir)


@pytest.mark.parametrize("fault", ["nan_loss:3", "nan_grad:3"])
def test_nan_stops_with_last_good_checkpoint(tmp_path: Path, monkeypatch, fault: str) -> None:
    monkeypatch.setenv("TUNEDECK_FAULT", fault)
    run_dir, code = train_in_process(small_config(tmp_path, "sft", save_every=2))
    assert code == 1
    error = runs.read_events(run_dir)[-1]
    assert error["type"] == "error" and error["kind"] == "nan"
    assert "step 3" in error["message"] and "learning rate" in error["message"] and "step-000002" in error["message"]
    assert checkpoint_files.latest_checkpoint(run_dir).name == "step-000002"
    assert not (run_dir / "checkpoints" / "step-000003").exists()
    weights = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
    assert all(bool(mx.all(mx.isfinite(v))) for v in weights.values())
    assert runs.run_info(run_dir).status == "failed"


@pytest.mark.parametrize("method", ["sft", "kto"])
def test_resume_after_signal_is_bit_exact(tmp_path: Path, method: str) -> None:
    overrides = dict(train__iters=8, train__save_every=100, train__eval_every=100)
    straight, code = train_in_process(small_config(tmp_path / "a", method), **overrides)
    assert code == 0
    config = small_config(tmp_path / "b", method)
    run_dir = start(config, **overrides)
    pid = runs.spawn_detached(run_dir, extra_env={"TUNEDECK_FAULT": "step_sleep:0.3"})
    assert runs.wait_started(run_dir, pid)
    wait_for(run_dir, lambda e: e["type"] == "step" and e["step"] >= 2)
    r = run_cli("stop", str(run_dir))
    assert r.returncode == 0, r.stderr
    stopped = runs.read_events(run_dir)[-1]
    assert stopped["type"] == "stopped" and stopped["signal"] == "SIGTERM"
    k = stopped["step"]
    assert 2 <= k < 8 and checkpoint_files.latest_checkpoint(run_dir).name == f"step-{k:06d}"
    assert runs.run_info(run_dir).status == "stopped"
    r = run_cli("train", "--resume", str(run_dir), "--quiet")
    assert r.returncode == 0, r.stderr
    assert steps(run_dir) == steps(straight)  # identical per-step losses and learning rates
    a, b = adapter(straight), adapter(run_dir)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_kill9_then_resume(tmp_path: Path) -> None:
    overrides = dict(train__iters=8, train__save_every=2, train__eval_every=100)
    straight, _ = train_in_process(small_config(tmp_path / "a", "sft"), **overrides)
    run_dir = start(small_config(tmp_path / "b", "sft"), **overrides)
    r = run_cli("train", "--resume", str(run_dir), "--detach")  # resume of a fresh dir starts from scratch
    assert r.returncode == 0, r.stderr
    pid = runs.read_pid(run_dir)
    wait_for(run_dir, lambda e: e["type"] == "checkpoint" and e["step"] >= 4)
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while runs.is_locked(run_dir) and time.time() < deadline:
        time.sleep(0.05)
    assert runs.run_info(run_dir).status == "stale"
    r = run_cli("train", "--resume", str(run_dir), "--quiet")
    assert r.returncode == 0, r.stderr
    events = runs.read_events(run_dir)
    assert any(e["type"] == "warning" and f"pid {pid}" in e["message"] for e in events)
    assert events[-1]["type"] == "done"
    resumed_from = [e for e in events if e["type"] == "start"][-1]["resumed_from"]
    k = int(resumed_from.split("-")[1])
    after = {s: v for s, v in steps(run_dir).items() if s > k}
    assert after == {s: v for s, v in steps(straight).items() if s > k}
    a, b = adapter(straight), adapter(run_dir)
    assert all(np.array_equal(a[key], b[key]) for key in a)


def test_detach_runs_and_cli_lists(tmp_path: Path) -> None:
    config = small_config(tmp_path, "kto", iters=3)
    r = run_cli("train", str(config), "--detach", "--set", "train.iters=3")
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip())
    assert run_dir.parent == tmp_path / "runs"
    listed = json.loads(run_cli("runs", str(tmp_path / "runs"), "--json").stdout)
    assert listed[0]["run_dir"] == str(run_dir) and listed[0]["status"] in ("running", "finished")
    wait_for(run_dir, lambda e: e["type"] == "done")
    deadline = time.time() + 30
    while runs.is_locked(run_dir) and time.time() < deadline:
        time.sleep(0.05)
    (info,) = json.loads(run_cli("runs", str(tmp_path / "runs"), "--json").stdout)
    assert info["status"] == "finished" and info["step"] == info["total_steps"] == 3 and "pid" not in info
    assert info["method"] == "kto" and isinstance(info["last_loss"], float)
    r = run_cli("stop", str(run_dir))
    assert r.returncode == 1 and "not running" in r.stderr


def test_foreground_train_with_progress(tmp_path: Path) -> None:
    config = small_config(tmp_path, "sft", iters=2, save_every=2, eval_every=2)
    r = run_cli("train", str(config))
    assert r.returncode == 0, r.stderr
    assert "step 2/2" in r.stderr and "done" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatch_size = 0\n")
    r = run_cli("train", str(bad))
    assert r.returncode == 1 and "train.batch_size" in r.stderr and "Traceback" not in r.stderr


def test_prepare_run_leaves_the_callers_config_as_it_was(tmp_path: Path) -> None:
    import copy

    path = small_config(tmp_path, "sft")
    cfg, _ = C.load(path)
    cfg.data.path = os.path.relpath(cfg.data.path, tmp_path)  # relative: the frozen copy makes it absolute
    before = copy.deepcopy(cfg)
    run = prepare_run(cfg, path, tmp_path / "runs")
    assert cfg == before
    frozen, _ = C.load(run / "config.toml")
    assert Path(frozen.data.path).is_absolute() and frozen.data.path == str((tmp_path / before.data.path).resolve())
