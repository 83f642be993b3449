"""The event schema (core.events): every event type built, written and parsed back; strict JSON; what
readers tolerate; and the one fold (RunState) against what `tunedeck runs --json` prints for a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import ENV, tiny_config
from tunedeck.core import events as ev
from tunedeck.core import runs
from tunedeck.tui.widgets.train_history import RunHistory

MEMORY = {"rss_gb": 0.5, "mlx_active_gb": 0.01, "peak_memory_gb": 0.02, "sys_used_gb": 3.0,
          "sys_available_gb": 5.0, "sys_total_gb": 8.0}
#: One event of each type, with its optional fields, as the trainer writes them.
SAMPLES: dict[str, dict] = {
    "start": {"method": "kto", "total_steps": 4, "resumed_from": "step-000002", "trainable_params": 6656,
              "total_params": 4040960, "train_examples": 28, "valid_examples": 4, "desirable": 24, "undesirable": 4,
              "batches_per_epoch": 4, "backend": "cpu", "dtype": "float32", "note": "Linux CPU", "model": "demo",
              "workers": 1, "learning_rate": 0.001, "pid": 4242, "reference_cached": False,
              "reference_seconds": 2.35, "data_sha256": "ab" * 32, "model_files": [["model.safetensors", 16, 1700]]},
    "step": {"loss": 0.69, "lr": 1e-3, "tokens": 120, "tokens_per_sec": 300.5, "seq_tokens_per_sec": 900.0,
             "tokens_per_sec_per_worker": 300.5, "step_time": 0.4, "grad_norm": 1.5, "total_steps": 4,
             "eta_sec": 1.2, "rewards_chosen": 0.1, "rewards_rejected": -0.1, "margin": 0.2, "kl": 0.0,
             "logps_chosen": -80.0, "logps_rejected": -90.0, **MEMORY},
    "eval": {"val_loss": 0.7, "val_rewards_chosen": 0.05, "val_rewards_rejected": -0.05, "val_margin": 0.1},
    "checkpoint": {"path": "checkpoints/step-000004", "pruned": ["step-000002"]},
    "reference": {"done": 8, "total": 64, "rate": 12.5, "eta_s": 4.5, "workers": 1, **MEMORY},
    "warning": {"message": "the terminal went away; training goes on", "signal": "SIGHUP"},
    "error": {"message": "non-finite loss at step 3", "kind": "nan"},
    "stopped": {"signal": "SIGTERM", "checkpoint": "checkpoints/step-000002", "phase": "reference"},
    "sample": {"prompt": 1, "question": "Find my garden notes", "text": '{"name": "search_notes"', "valid": False,
               "tokens": 12},
    "done": {"adapters": "adapters", "checkpoint": None, "seconds": 12.25},
}


def _strict(line: str):
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(ev.SCHEMA)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_round_trip(kind: str) -> None:
    event = ev.build(kind, 3, **SAMPLES[kind])
    assert list(event)[:3] == ["type", "step", "time"] and event["type"] == kind and event["step"] == 3
    line = ev.encode(event)
    assert "\n" not in line and _strict(line) == event
    assert ev.parse(line) == event and ev.problems(event) == []


def test_round_trip_without_the_optional_fields() -> None:
    for kind, fields in SAMPLES.items():
        required = {k: v for k, v in fields.items() if k in ev.SCHEMA[kind].__required_keys__}
        event = ev.build(kind, 0, **required)
        assert ev.parse(ev.encode(event)) == event


def test_the_writer_writes_what_readers_read(tmp_path: Path) -> None:
    writer = runs.EventWriter(tmp_path)
    written = [writer.emit(kind, n, **fields) for n, (kind, fields) in enumerate(SAMPLES.items())]
    writer.close()
    assert runs.read_events(tmp_path) == written
    assert [_strict(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()] == written


@pytest.mark.parametrize("kind, fields, expected", [
    ("epoch", {}, "unknown event type 'epoch'"),
    ("checkpoint", {}, "checkpoint: missing field 'path'"),
    ("warning", {"message": "m", "colour": "red"}, "warning: unknown field 'colour'"),
    ("error", {"message": ["not", "text"], "kind": "io"}, "error.message: expected str, got list"),
    ("step", {**SAMPLES["step"], "tokens": 1.5}, "step.tokens: expected int, got float"),
    ("done", {**SAMPLES["done"], "seconds": True}, "done.seconds: expected float, got bool"),
    ("eval", {"val_loss": 0.5, "val_accuracy": "high"}, "eval.val_accuracy: expected float, got str"),
    ("warning", {"message": "m", "time": 5.0}, "time cannot be given"),
])
def test_build_refuses_what_the_schema_does_not_allow(kind: str, fields: dict, expected: str) -> None:
    with pytest.raises(ev.EventError, match=expected):
        ev.build(kind, 1, **fields)


def test_the_writer_writes_nothing_for_a_bad_event(tmp_path: Path) -> None:
    writer = runs.EventWriter(tmp_path)
    with pytest.raises(ev.EventError):
        writer.emit("checkpoint", 1, where="here")
    writer.close()
    assert (tmp_path / "events.jsonl").read_bytes() == b""


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    fields = {**SAMPLES["step"], "loss": inf, "rewards_chosen": nan, "rewards_rejected": -inf, "margin": nan}
    writer = runs.EventWriter(tmp_path)
    event = writer.emit("step", 2, **fields)
    writer.emit("checkpoint", 2, path="checkpoints/step-000002", pruned=[])
    writer.close()
    assert math.isnan(event["rewards_chosen"]) and event["loss"] == inf  # the caller's copy is as given
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    parsed = _strict(lines[0])
    assert [parsed[k] for k in ("loss", "rewards_chosen", "rewards_rejected", "margin")] == [None] * 4
    assert ev.problems(parsed, parsed=True) == [] and "step.loss: expected float, got NoneType" in ev.problems(parsed)
    assert parsed["kl"] == 0.0 and parsed["lr"] == 1e-3
    assert _strict(ev.encode({"type": "x", "nested": [1.0, {"a": nan}, (inf, 2)]})) == {
        "type": "x", "nested": [1.0, {"a": None}, [None, 2]]}


LINE = ev.encode(ev.build("step", 7, **SAMPLES["step"]))


@pytest.mark.parametrize("line", [
    "", "hello world", "{{{{", "[1, 2]", "42", '"step"', "null", "true", '{"step": 5}', '{"type": 5, "step": 6}',
    '{"type": null}', "\ufffd\ufffd\x00garbage", "[" * 100_000 + "]" * 100_000,
    '{"type": "step", "x": "' + "a" * (1 << 20) + '"}',
    '{"type": "step", "step": ' + "9" * 5000 + '}',  # past Python's int-string limit: ValueError, not JSON's
], ids=lambda s: s[:12] or "empty")
def test_garbage_is_none(line: str) -> None:
    assert ev.parse(line) is None


def test_a_torn_line_is_none_until_it_is_whole(tmp_path: Path) -> None:
    assert all(ev.parse(LINE[:n]) is None for n in range(len(LINE)))
    assert ev.parse(LINE) == json.loads(LINE)
    path = tmp_path / "events.jsonl"
    path.write_text(LINE + "\n" + LINE[:40])  # a writer killed mid-line
    assert runs.read_events(tmp_path) == [json.loads(LINE)]
    path.write_text(LINE + "\n" + LINE + "\n")
    assert len(runs.read_events(tmp_path)) == 2


def test_fields_are_not_checked_on_reading_and_the_fold_coerces_them() -> None:
    """A line anyone wrote: parsed as it is; RunState keeps only finite numbers (as `runs --json` needs)."""
    lines = ['{"type": "start", "step": "x", "total_steps": "ten", "workers": "many", "method": 5, "time": 1}',
             '{"type": "step", "step": true, "loss": "low", "time": "now"}',
             '{"type": "step", "step": 3, "time": 2.5, "loss": NaN}',
             '{"type": "eval", "step": 3, "val_loss": Infinity}',
             '{"type": "step", "step": 2, "loss": 1e308}',
             '{"type": "error", "step": 3, "message": ["not", "a", "string"]}',
             '{"type": "mystery", "step": 9}']
    parsed = [ev.parse(line) for line in lines]
    assert parsed[1] == {"type": "step", "step": True, "loss": "low", "time": "now"}
    state = ev.RunState()
    for e in parsed:
        state.apply(e)
    assert (state.method, state.total_steps, state.workers, state.step) == ("5", 0, 1, 9)
    assert (state.last_loss, state.last_val_loss, state.started, state.updated) == (1e308, None, 1, 2.5)
    assert state.outcome == "failed" and state.error == "['not', 'a', 'string']" and state.events == 7


def test_the_fold_of_a_resumed_run() -> None:
    """A start begins an attempt: the outcome clears, `started` stays the first attempt's, and
    `attempt_started` is the latest attempt's first reference event."""
    state = ev.RunState()
    history = [("start", 0, 10.0, {"method": "kto", "total_steps": 4}), ("eval", 2, 11.0, {"val_loss": 0.5}),
               ("error", 2, 12.0, {"message": "boom", "kind": "io"}), ("reference", 2, 20.0, {"done": 1, "total": 4}),
               ("reference", 2, 21.0, {"done": 4, "total": 4}), ("start", 2, 22.0, {"method": "kto", "total_steps": 6}),
               ("eval", 4, 23.0, {"val_loss": 0.7})]
    for kind, step, when, fields in history:
        state.apply({"type": kind, "step": step, "time": when, **fields})
        assert state.in_reference == (kind == "reference")
        if kind == "error":
            assert state.outcome == "failed"
    assert state.outcome is None and state.began and (state.step, state.total_steps) == (4, 6)
    assert (state.started, state.attempt_started, state.updated) == (10.0, 20.0, 23.0)
    assert (state.last_val_loss, state.best_val_loss) == (0.7, 0.5)
    assert state.error == "boom"  # kept, as `runs --json` always showed it


@pytest.mark.slow
def test_the_fold_of_a_real_run_is_what_runs_json_prints(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "ws", "kto", iters=2, eval_every=1, save_every=1)
    run_dir = tmp_path / "ws" / "runs" / "r"
    r = run_cli("train", str(config), "--run-dir", str(run_dir), "--quiet", env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", str(run_dir), "--set", "train.iters=3", "--quiet", env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    r = run_cli("runs", str(run_dir.parent), "--json")
    assert r.returncode == 0, r.stderr
    (listed,) = _strict(r.stdout)

    recorded = runs.read_events(run_dir)
    assert {e["type"] for e in recorded} >= {"reference", "start", "step", "eval", "checkpoint", "done"}
    assert [p for e in recorded for p in ev.problems(e, parsed=True)] == []  # the trainer keeps to the schema
    state = ev.RunState()
    for e in recorded:
        state.apply(e)
    folded = {"run_dir": str(run_dir), "status": state.outcome, "method": state.method, "step": state.step,
              "total_steps": state.total_steps, "last_loss": state.last_loss, "last_val_loss": state.last_val_loss,
              "best_val_loss": state.best_val_loss, "started": state.started, "updated": state.updated,
              "workers": state.workers}
    assert folded == listed
    assert (folded["status"], folded["step"], folded["total_steps"]) == ("finished", 3, 3)
    assert runs.summarize(recorded, run_dir, alive=False, pid=None).to_json() == listed

    history = RunHistory()  # the app's Train screen folds the same events through RunState
    for e in recorded:
        history.apply(e)
    assert (history.status, history.step, history.total, history.method) == ("finished", 3, 3, "kto")
    assert history.best_val_loss == listed["best_val_loss"] and history.error is None
