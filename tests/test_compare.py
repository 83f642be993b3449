"""`tunedeck runs compare` and core.compare on two real finished tiny KTO runs that differ in learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, make_run
from tunedeck.core import config as C
from tunedeck.core.compare import CompareError, compare

LR = (1e-4, 5e-4)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two finished KTO runs from one workspace (same data path), at two learning rates."""
    from tunedeck.core.trainer import Trainer

    ws = tmp_path_factory.mktemp("compare") / "ws"
    out = []
    for lr in LR:
        run = make_run(ws, "kto", learning_rate=lr)
        assert Trainer(run).run() == 0
        out.append(run)
    return out


def independent(run_dir: Path) -> dict:
    """The numbers compare should give, read straight from events.jsonl (no resume in these runs)."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    evals = [e for e in events if e["type"] == "eval"]
    margins = [e["margin"] for e in steps if e.get("margin") is not None]
    accuracy = [e["val_reward_accuracy"] for e in evals if e.get("val_reward_accuracy") is not None]
    return {
        "status": "finished" if events[-1]["type"] == "done" else events[-1]["type"],
        "final_loss": steps[-1]["loss"], "best_loss": min(e["loss"] for e in steps),
        "final_val_loss": evals[-1]["val_loss"], "best_val_loss": min(e["val_loss"] for e in evals),
        "final_margin": margins[-1], "best_margin": max(margins),
        "final_reward_accuracy": accuracy[-1] if accuracy else None,
        "tokens_trained": sum(e["tokens"] for e in steps), "steps": len(steps),
    }


@pytest.mark.slow
def test_numbers_and_config_diff_match_the_event_logs(two_runs: list[Path]) -> None:
    c = compare(two_runs)
    assert c.config_diff == {"train.learning_rate": list(LR)}  # the only key set differently
    for summary, run_dir in zip(c.runs, two_runs, strict=True):
        want = independent(run_dir)
        got = summary.to_json()
        assert want["steps"] == 4 and got["step"] == 4 and got["total_steps"] == 4
        for key in ("status", "final_loss", "best_loss", "final_val_loss", "best_val_loss", "final_margin",
                    "best_margin", "final_reward_accuracy", "tokens_trained"):
            assert got[key] == want[key], key  # the same floats, read from the same JSON text
        xs, _ = summary.curves.series("loss", by_tokens=True)
        assert xs[-1] == want["tokens_trained"] and xs == sorted(xs)


@pytest.mark.slow
def test_cli_text_and_json(two_runs: list[Path]) -> None:
    a, b = two_runs
    r = cli("runs", "compare", str(a), str(b))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == [a.name, b.name]
    rows = {line.split("  ")[0].strip(): line.split()[-2:] for line in lines[1:] if line}
    wa, wb = independent(a), independent(b)
    assert rows["status"] == ["finished", "finished"]
    assert rows["final loss"] == [f"{wa['final_loss']:.4f}", f"{wb['final_loss']:.4f}"]
    assert rows["best val_loss"] == [f"{wa['best_val_loss']:.4f}", f"{wb['best_val_loss']:.4f}"]
    assert rows["tokens trained"] == [str(wa["tokens_trained"]), str(wb["tokens_trained"])]
    assert rows["final reward accuracy"] == [
        "-" if w["final_reward_accuracy"] is None else f"{w['final_reward_accuracy']:.3f}" for w in (wa, wb)]
    assert lines[lines.index("config keys that differ:") + 1].split() == ["train.learning_rate", "0.0001", "0.0005"]

    j = cli("runs", "compare", str(a), str(b), "--json")
    assert j.code == 0, j.err
    doc = json.loads(j.out)
    assert doc["config_diff"] == {"train.learning_rate": list(LR)}
    assert [r["run_dir"] for r in doc["runs"]] == [str(a), str(b)]
    assert doc["runs"][1]["final_loss"] == wb["final_loss"]


def fake_run(root: Path, name: str, config: str | None = None) -> Path:
    """A run directory holding only a config.toml (the demo preset unless `config` is given)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(C.preset("demo", "data.jsonl").to_toml() if config is None else config)
    return run


def test_bad_input_is_one_line_and_exit_1(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "a")
    not_run = tmp_path / "plain"
    not_run.mkdir()
    for args, message in [
        ([str(a)], "compare needs at least two run directories (got 1)"),
        ([str(a), str(not_run)], f"{not_run} is not a run directory (no config.toml)"),
        ([str(a), str(tmp_path / "missing")], f"{tmp_path / 'missing'} is not a run directory (no config.toml)"),
        ([str(a), str(tmp_path / "." / "a")], f"{tmp_path / 'a'} is given twice (as {a})"),
    ]:
        r = cli("runs", "compare", *args)
        assert (r.code, r.out, r.err) == (1, "", f"tunedeck: error: {message}\n")
    bad = fake_run(tmp_path, "b", "[train]\niters = 'many'\n")
    with pytest.raises(CompareError, match=r"b/config.toml: train.iters: "):
        compare([a, bad])
    r = cli("runs", "compare", str(a), str(bad))
    assert r.code == 1 and r.err.count("\n") == 1 and "train.iters" in r.err


def test_hostile_names_are_shown_literally(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "run\x1b[31m-red")
    b = fake_run(tmp_path, "run\n[b]two")
    r = cli("runs", "compare", str(a), str(b))
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].split() == ["run\\x1b[31m-red", "run\\n[b]two"]
    assert "\x1b" not in r.out
    assert r.out.splitlines()[-1] == "config: no key differs"


def test_runs_listing_is_unchanged_beside_compare(tmp_path: Path) -> None:
    r = cli("runs", str(tmp_path))
    assert (r.code, r.out) == (0, f"no runs in {tmp_path}\n")
    assert cli("runs", str(tmp_path), "--json").out == "[]\n"
