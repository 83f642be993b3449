"""The first hour of a user's own project, through the CLI in-process: relative paths from their own
directory, KTO weights fitted to their split, a model that cannot be had refused before anything starts,
resume keeping what the checkpoints were made with, and why a run failed."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.conftest import small_config
from tests.reliability.conftest import cli
from tunedeck.core import config as C
from tunedeck.core import demo


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's own directory, as the working directory, holding the full sample data as my_data.jsonl."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_data.jsonl").write_bytes(demo.sample_dataset().read_bytes())
    monkeypatch.chdir(work)
    return work


def test_config_init_fits_the_kto_weights_to_the_data(project: Path) -> None:
    r = cli("config", "init", "conf/my.toml", "--data", "my_data.jsonl")
    assert r.code == 0, r.err
    assert "750 desirable / 250 undesirable" in r.out
    cfg = tomllib.loads((project / "conf" / "my.toml").read_text(encoding="utf-8"))
    assert cfg["data"]["path"] == "../my_data.jsonl"  # relative to the config file, not to where it was typed
    wd, wu = cfg["kto"]["desirable_weight"], cfg["kto"]["undesirable_weight"]
    assert 1 <= (wd * 750) / (wu * 250) <= 4 / 3  # the KTO paper's rule, computed here from the counts
    r = cli("config", "check", "conf/my.toml")
    assert r.code == 0 and "warning" not in r.err and "ok (kto" in r.out, r.err


def test_config_check_warns_when_the_weights_break_the_rule(project: Path) -> None:
    assert cli("config", "init", "my.toml", "--data", "my_data.jsonl").code == 0
    r = cli("config", "check", "my.toml", "--set", "kto.desirable_weight=1.0", "--set", "kto.undesirable_weight=1.0")
    assert r.code == 0 and "1 warning(s)" in r.out
    assert "my.toml: warning:" in r.err and "suggested: kto.desirable_weight = " in r.err
    assert "kto.undesirable_weight = 2.25" in r.err  # 750·1 / (250·2.25) = 4/3, the rule's upper edge


def test_detach_with_a_model_that_cannot_be_had_fails_at_once(project: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = small_config(project / "p", "kto", n=24)
    r = cli("train", str(config.relative_to(project)), "--detach", "--set", "model.path=nobody/no-such-model")
    assert r.code == 1 and "Traceback" not in r.err
    assert "nobody/no-such-model" in r.err and "not in the local Hugging Face cache" in r.err
    assert "nothing was started" in r.err
    assert not (project / "p" / "runs").exists()  # no run directory is left behind


def test_resume_refuses_changes_to_what_the_checkpoints_were_made_with(project: Path) -> None:
    from tunedeck.core.run_prep import prepare_run

    config = small_config(project / "p", "sft", n=24)
    cfg, _ = C.load(config)
    run_dir = prepare_run(cfg, config, project / "p" / "runs")
    frozen = (run_dir / "config.toml").read_bytes()
    r = cli("train", "--resume", str(run_dir), "--set", "lora.rank=8", "--set", "train.iters=9",
            "--set", "data.valid_fraction=0.5")
    assert r.code == 1 and "Traceback" not in r.err
    assert "lora.rank, data.valid_fraction: cannot change on resume" in r.err
    assert (run_dir / "config.toml").read_bytes() == frozen


def test_runs_prints_why_a_run_failed(project: Path) -> None:
    run_dir = project / "runs" / "20260101-000000-kto"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(C.preset("demo", "d.jsonl").to_toml(), encoding="utf-8")
    events = [{"type": "start", "step": 0, "time": 1.0, "method": "kto", "total_steps": 10},
              {"type": "error", "step": 0, "time": 2.0, "message": "cannot find model 'x/y'\x1b]52;c;SGVsbG8=\x07"}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    r = cli("runs")
    assert r.code == 0 and "failed" in r.out
    assert "└ cannot find model 'x/y'" in r.out
    assert "\x1b" not in r.out and "\x07" not in r.out and "\\x1b]52" in r.out  # shown, never sent to the terminal


@pytest.mark.slow
def test_resume_warns_when_the_dataset_changed_since_the_run_started(tmp_path: Path) -> None:
    from tests.reliability.conftest import make_run
    from tunedeck.core import runs
    from tunedeck.core.trainer import Trainer

    run_dir = make_run(tmp_path / "ws", "sft", iters=2, save_every=1)
    assert Trainer(run_dir).run() == 0
    start = next(e for e in runs.read_events(run_dir) if e["type"] == "start")
    data_file = Path(C.load(run_dir / "config.toml")[0].data.path)
    import hashlib

    assert start["data_sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    lines = data_file.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[0])
    record["label"] = not record.get("label", True)  # a label fixed in the Data screen after the run started
    data_file.write_text(json.dumps(record) + "\n" + "".join(lines[1:]), encoding="utf-8")
    r = cli("train", "--resume", run_dir, "--set", "train.iters=3", "--quiet")
    assert r.code == 0, r.err
    warnings = [e["message"] for e in runs.read_events(run_dir) if e["type"] == "warning"]
    assert any("changed since this run started" in w and "not exact" in w for w in warnings), warnings
