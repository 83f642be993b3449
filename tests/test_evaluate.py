"""`tunedeck eval`: base vs adapter on held-out examples, through the real CLI and in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import kl_atol, run_cli
from tunedeck.core import data
from tunedeck.core import evaluate as ev
from tunedeck.core import toolcalls as tc

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
TRAIN_SET = ["train.iters=4", "train.eval_every=4", "train.save_every=4", "train.warmup_steps=0",
             "data.max_seq_len=256", "train.batch_size=4"]


@pytest.fixture(scope="module")
def trained_run(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step KTO run of the demo model on 64 sample lines (tools.json beside the data)."""
    root = tmp_path_factory.mktemp("evalrun")
    lines = (SAMPLE / "notes_tool_use.jsonl").read_text(encoding="utf-8").splitlines()[:64]
    (root / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(SAMPLE / "tools.json", root / "tools.json")
    assert run_cli("config", "init", "c.toml", "--preset", "demo", "--data", "d.jsonl", cwd=root).returncode == 0
    sets = [a for s in TRAIN_SET for a in ("--set", s)]
    r = run_cli("train", str(root / "c.toml"), "--run-dir", str(root / "run"), "--quiet", *sets)
    assert r.returncode == 0, r.stderr
    return root / "run"


def test_eval_cli_reports_every_metric_and_writes_eval_json(trained_run: Path) -> None:
    (trained_run / "eval.json").unlink(missing_ok=True)
    r = run_cli("eval", str(trained_run), "--json", "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert "eval: log-probs (base)" in r.stderr and "eval: generating (adapter)" in r.stderr
    report = json.loads(r.stdout)
    assert json.loads((trained_run / "eval.json").read_text()) == report
    m = report["metrics"]
    assert set(m) == set(ev.DEFINITIONS) == set(report["definitions"])
    for key in ("loss", "perplexity", "loss_undesirable", "tool_call_valid", "tool_name_match", "tool_call_unexpected"):
        assert isinstance(m[key]["base"], float) and isinstance(m[key]["adapter"], float), key
        assert m[key]["delta"] == pytest.approx(m[key]["adapter"] - m[key]["base"])
    for key in ("reward_desirable", "reward_undesirable", "reward_margin", "reward_accuracy"):
        assert m[key]["base"] is None and m[key]["delta"] is None and isinstance(m[key]["adapter"], float), key
    assert m["perplexity"]["adapter"] == pytest.approx(2.718281828 ** m["loss"]["adapter"], rel=1e-6)
    assert m["reward_margin"]["adapter"] == pytest.approx(m["reward_desirable"]["adapter"] - m["reward_undesirable"]["adapter"])
    # the rewards agree with the trainer's own last validation pass (same split, reference = base)
    last_eval = [e for e in map(json.loads, (trained_run / "events.jsonl").read_text().splitlines())
                 if e["type"] == "eval"][-1]
    assert last_eval["step"] == 4
    # rewards are β·(Σlog π − Σlog π_ref), from two float32 evaluations batched differently (the trainer's
    # validation and eval's): two sums' rounding each (tests/conftest.py), times β
    atol = report["beta"] * kl_atol()
    assert m["reward_desirable"]["adapter"] == pytest.approx(last_eval["val_rewards_chosen"], rel=1e-3, abs=atol)
    assert m["reward_undesirable"]["adapter"] == pytest.approx(last_eval["val_rewards_rejected"], rel=1e-3, abs=atol)
    # the same sign test, counted by each; a reward within rounding of 0 may count on one side only
    assert abs(m["reward_accuracy"]["adapter"] - last_eval["val_reward_accuracy"]) <= 1 / report["examples"] + 1e-9
    tu = report["tool_use"]
    assert tu["format"] == "json" and tu["tools_source"].endswith("tools.json") and len(tu["tools"]) == 7
    assert tu["generation"] in ("batch_generate", "generate") and tu["prompts"] == report["desirable"]
    assert report["desirable"] + report["undesirable"] == report["examples"] == len(report["generations"]) + report["undesirable"]


def test_eval_cli_prints_a_table(trained_run: Path) -> None:
    r = run_cli("eval", str(trained_run), "--max-tokens", "0", "--max-examples", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "base", "adapter", "delta"]
    for label in ("loss (desirable, /token)", "perplexity (desirable)", "reward margin", "reward accuracy"):
        row = next(line for line in lines if line.startswith(label))
        assert ("n/a" in row) == label.startswith("reward"), row
    assert "tool-call score skipped: --max-tokens 0" in r.stdout
    assert json.loads((trained_run / "eval.json").read_text())["examples"] == 4


def test_validation_split_is_the_trainers(trained_run: Path) -> None:
    cfg = ev.run_config(trained_run)
    held, everything, path = ev.held_out(cfg)
    ds = data.load(cfg.data.path)
    assert held == data.split(ds.examples, cfg.data.valid_fraction, cfg.train.seed)[1]
    assert everything == ds.examples and path == Path(cfg.data.path)
    start = next(json.loads(x) for x in (trained_run / "events.jsonl").read_text().splitlines()
                 if json.loads(x)["type"] == "start")
    assert start["valid_examples"] == len(held)


def test_tool_scores_count_well_formed_and_matching_calls() -> None:
    box = tc.Toolbox(tc.load_tools(SAMPLE / "tools.json"), "tools.json", "json")
    refs = ['{"name": "read_note", "arguments": {"path": "a.md"}}',
            '{"name": "move_note", "arguments": {"src": "a.md", "dst": "b.md"}}',
            '{"name": "search_notes", "arguments": {"query": "garden"}}',
            '{"name": "list_tags", "arguments": {}}',
            "Your garden note says to water on Sundays."]
    answers = {
        "base": ["I can't access your notes."] * 4 + ['{"name": "list_tags", "arguments": {}}'],
        "adapter": [refs[0],
                    '{"name": "move_note", "arguments": {"src": "a.md"}}',  # right tool, missing dst
                    '{"name": "read_note", "arguments": {"path": "garden.md"}}',  # valid, wrong tool
                    "{'name': 'list_tags', 'arguments': {}}",  # invalid JSON
                    "It says to water on Sundays."],
    }
    m, reasons, details = ev.score_tool_calls(answers, refs, box, [10, 11, 12, 13, 14])
    assert m["tool_call_valid"] == {"base": 0.0, "adapter": 0.5}
    assert m["tool_name_match"] == {"base": 0.0, "adapter": 0.5}
    assert m["tool_call_unexpected"] == {"base": 1.0, "adapter": 0.0}
    assert reasons == {"base": {"no_call": 4},
                       "adapter": {"ok": 2, "missing_argument": 1, "invalid_json": 1}}
    assert details[1]["line"] == 11 and details[1]["reference_tool"] == "move_note"
    assert details[1]["adapter"]["code"] == "missing_argument" and "'dst'" in details[1]["adapter"]["reason"]
    assert details[4]["reference_tool"] is None and details[4]["base"]["tool"] == "list_tags"


def test_generation_falls_back_to_sequential(demo_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlx_lm

    model, tok = mlx_lm.load(str(demo_model))
    prompts = [tok.encode("hello there"), tok.encode("open my garden note please")]
    state: dict[str, str] = {}
    batched = ev._generate(model, tok, prompts, 4, state, lambda n: None)
    assert state["method"] == "batch_generate" and len(batched) == 2

    def broken(*a, **k):
        raise RuntimeError("no batching here")

    monkeypatch.setattr(mlx_lm, "batch_generate", broken)
    state, seen = {}, []
    texts = ev._generate(model, tok, prompts, 4, state, seen.append)
    assert state == {"method": "generate", "fallback_reason": "RuntimeError: no batching here"}
    assert seen == [1, 2] and [t.strip() for t in texts] == [t.strip() for t in batched]  # greedy both ways


def test_split_file_and_subset(trained_run: Path, tmp_path: Path) -> None:
    f = tmp_path / "held.jsonl"
    lines = (SAMPLE / "notes_tool_use.jsonl").read_text(encoding="utf-8").splitlines()[500:520]
    f.write_text("\n".join(lines) + "\n")
    r = run_cli("eval", str(trained_run), "--split", str(f), "--max-examples", "5", "--max-tokens", "0", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["split"] == str(f) and report["examples"] == 5
    assert report["desirable"] >= 1 and report["undesirable"] >= 1
    assert report["tool_use"]["skipped"] == "--max-tokens 0"
    assert report["metrics"]["tool_call_valid"] == {"base": None, "adapter": None, "delta": None}


def test_subset_keeps_both_labels_in_order() -> None:
    exs = [data.Example([], str(i), i % 5 != 0, i + 1, "") for i in range(20)]  # 16 desirable, 4 undesirable
    sub = ev.subset(exs, 5)
    assert len(sub) == 5 and sum(not e.label for e in sub) == 1
    assert [e.line for e in sub] == sorted(e.line for e in sub)
    assert ev.subset(exs, 0) is exs and ev.subset(exs, 50) is exs


def test_bad_input_is_a_clean_error(trained_run: Path, tmp_path: Path) -> None:
    r = run_cli("eval", str(tmp_path))
    assert r.returncode == 1 and "not a run directory" in r.stderr and "Traceback" not in r.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(trained_run / "config.toml", fresh / "config.toml")
    r = run_cli("eval", str(fresh))
    assert r.returncode == 1 and "no adapters yet" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", str(trained_run), "--split", str(tmp_path / "none.jsonl"))
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", str(trained_run), "--checkpoint", "step-999999")
    assert r.returncode == 1 and "step-000004" in r.stderr and "Traceback" not in r.stderr
