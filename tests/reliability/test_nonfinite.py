"""A NaN or inf loss (or gradient) stops the run at that step, in SFT and KTO, with a message naming the
step and the likely causes; nothing non-finite is saved. TUNEDECK_FAULT poisons step K:
nan_loss:K / inf_loss:K multiply the loss by NaN / inf, nan_grad:K the gradients."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from tests.reliability.conftest import cli, make_run, tiny_config, tmp_leftovers
from tunedeck.core import checkpoint_files, runs
from tunedeck.core.trainer import Trainer

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.mark.parametrize("method,fault", [("sft", "inf_loss:2"), ("kto", "inf_loss:2"), ("kto", "nan_loss:2"),
                                          ("kto", "nan_grad:2")])
def test_non_finite_step_stops_the_run(tmp_path: Path, monkeypatch, method: str, fault: str) -> None:
    monkeypatch.setenv("TUNEDECK_FAULT", fault)
    run_dir = make_run(tmp_path, method, iters=4, save_every=1)
    assert Trainer(run_dir).run() == 1
    error = runs.read_events(run_dir)[-1]
    assert error["type"] == "error" and error["kind"] == "nan" and error["step"] == 2
    msg = error["message"]
    assert "at step 2" in msg and "learning rate" in msg and "float16" in msg and "bad batch" in msg
    assert "Last good checkpoint: step-000001" in msg
    if fault.startswith("inf"):
        assert "(inf)" in msg or "(-inf)" in msg or "(nan)" in msg
    assert checkpoint_files.latest_checkpoint(run_dir).name == "step-000001"
    assert not (run_dir / "checkpoints" / "step-000002").exists() and not tmp_leftovers(run_dir)
    weights = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
    assert weights and all(bool(mx.all(mx.isfinite(v))) for v in weights.values())
    info = runs.run_info(run_dir)
    assert info.status == "failed" and "step 2" in info.error
    for raw in (run_dir / "events.jsonl").read_text().splitlines():  # strict JSON: NaN/inf are written as null
        json.loads(raw, parse_constant=lambda token: pytest.fail(f"{token} in events.jsonl"))


def test_cli_reports_inf_loss_without_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNEDECK_FAULT", "inf_loss:1")
    config = tiny_config(tmp_path, "kto", iters=3)
    r = cli("train", config, "--quiet")
    assert r.code == 1
    assert "tunedeck: error: non-finite loss (inf) at step 1" in r.err and "Traceback" not in r.err
    assert "Last good checkpoint: none" in r.err
