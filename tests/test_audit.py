"""The label audit (core.audit, `tunedeck data audit`): real 2-fold audits of a small dataset on the demo model.

Every example is scored exactly once, by the fold that held it out (whose training file does not hold it); the
results are ordered by score and point at the right lines; the user's file is never written; a second start
reuses finished folds and resumes stopped ones; the reward is recomputed by hand through mlx-lm. Bad input is
one line and exit 1, with nothing written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import logp_sum_atol, run_cli
from tests.reliability.conftest import ENV, cli, tiny_config, wait_for
from tunedeck.core import audit, runs
from tunedeck.core import config as C
from tunedeck.core.audit_plan import fold_dir, fold_file, read_plan
from tunedeck.core.audit_score import scores_file
from tunedeck.core.text import one_line

ESC_LINE = 3  # this line's completion gets terminal control characters (untrusted text)
TIMEOUT = 900  # seconds for a whole audit on a busy 2-core machine (two trainer starts, two scoring passes)


def _workspace(root: Path, iters: int = 4) -> Path:
    """A tiny KTO config over the first 24 sample lines (20 desirable, 4 undesirable), one with an ESC."""
    config = tiny_config(root, "kto", n=24, iters=iters, learning_rate=1e-3)
    data = root / "data.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[ESC_LINE - 1])
    record["conversations"][-1]["content"] = "\x1b]0;owned\x07\x1b[2J" + record["conversations"][-1]["content"]
    lines[ESC_LINE - 1] = json.dumps(record)
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _wait_done(audit_dir: Path) -> audit.AuditStatus:
    status = wait_for(lambda: (s := audit.audit_status(audit_dir)).state != "running" and s, TIMEOUT,
                      f"the audit in {audit_dir} to end", poll=0.5)
    assert status.state == "done", (status, (audit_dir / "audit.log").read_text(errors="replace")[-3000:])
    return status


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> dict:
    """One audit through the real command (`tunedeck data audit CONFIG --json`, a subprocess)."""
    root = tmp_path_factory.mktemp("audit")
    config = _workspace(root)
    data = root / "data.jsonl"
    before = data.read_bytes()
    r = run_cli("data", "audit", str(config), "--json", cwd=root, timeout=TIMEOUT, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # ONE object: json.loads refuses anything after it
    audit_dir = Path(out["audit_dir"])
    assert audit_dir.is_absolute() and audit_dir.parent == (root / "audits").resolve()
    return {"root": root, "config": config, "data": data, "before": before, "out": out, "stderr": r.stderr,
            "audit_dir": audit_dir}


def _record(data: Path, line: int) -> dict:
    return json.loads(data.read_text(encoding="utf-8").splitlines()[line - 1])


@pytest.mark.slow
def test_every_line_is_scored_once_by_a_fold_that_did_not_train_on_it(audited: dict) -> None:
    audit_dir, data = audited["audit_dir"], audited["data"]
    lines = data.read_text(encoding="utf-8").splitlines()
    suspects = audit.load_results(audit_dir)
    assert sorted(s.line for s in suspects) == list(range(1, 25))  # every line, each once
    plan = read_plan(audit_dir)
    assert plan.folds == 2 and {f for _, _, f in plan.examples} == {1, 2}
    for fold in (1, 2):
        trained = set(fold_file(audit_dir, fold, "train").read_text(encoding="utf-8").splitlines())
        held = fold_file(audit_dir, fold, "heldout").read_text(encoding="utf-8").splitlines()
        scored = [s.line for s in suspects if s.fold == fold]
        assert sorted(held) == sorted(lines[ln - 1] for ln in scored)  # the fold scored what it held out
        assert not trained & {lines[ln - 1] for ln in scored}  # and did not train on any of it
        assert trained | set(held) == set(lines)
        cfg, _ = C.load(fold_dir(audit_dir, fold) / "config.toml")
        assert Path(cfg.data.path) == fold_file(audit_dir, fold, "train").resolve()
        assert (cfg.train.method, cfg.data.valid_fraction) == ("kto", 0.0)
        assert runs.run_info(fold_dir(audit_dir, fold)).status == "finished"
    assert {s.label for s in suspects if s.fold == 1} == {True, False}  # stratified: each fold holds both


@pytest.mark.slow
def test_results_are_ordered_and_point_at_their_lines(audited: dict) -> None:
    out, data = audited["out"], audited["data"]
    suspects = out["suspects"]
    assert [s["rank"] for s in suspects] == list(range(1, 25))
    scores = [s["score"] for s in suspects]
    assert scores == sorted(scores, reverse=True)
    assert any(s["reward"] != 0 for s in suspects)  # the folds' adapters moved
    for s in suspects:
        record = _record(data, s["line"])
        assert s["label"] is record["label"]
        assert s["score"] == (-s["reward"] if s["label"] else s["reward"])
        assert one_line(record["conversations"][-1]["content"]).startswith(s["preview"])  # made safe, then shown
    shown = next(s for s in suspects if s["line"] == ESC_LINE)["preview"]
    assert "\x1b" not in shown and shown.startswith("\\x1b]0;owned\\x07")  # neutralised (core.text.one_line)
    assert data.read_bytes() == audited["before"]  # the user's file is byte-identical
    assert "fold 1/2" in audited["stderr"] and "fold 2/2" in audited["stderr"]  # a progress line per fold
    assert "\x1b" not in audited["stderr"]  # not a terminal: no redraws


@pytest.mark.slow
def test_text_output_shows_the_top_suspects_safely(audited: dict) -> None:
    r = cli("data", "audit", str(audited["config"]), "--top", "24")
    assert r.code == 0, r.err
    rows = [line for line in r.out.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 24 and "\x1b" not in r.out and "\x07" not in r.out
    first = audited["out"]["suspects"][0]
    assert rows[0].split()[:3] == ["1", str(first["line"]), "desirable" if first["label"] else "undesirable"]


@pytest.mark.slow
def test_a_second_start_reuses_the_finished_folds(audited: dict) -> None:
    audit_dir = audited["audit_dir"]
    events = {k: (fold_dir(audit_dir, k) / "events.jsonl").read_bytes() for k in (1, 2)}
    results = (audit_dir / "audit.json").read_bytes()
    assert audit.start_audit(audited["config"]) == audit_dir  # done: nothing is started
    assert (audit_dir / "audit.json").read_bytes() == results
    (audit_dir / "audit.json").unlink()
    for k in (1, 2):
        scores_file(audit_dir, k).unlink()
    assert audit.start_audit(audited["config"]) == audit_dir  # the driver again: folds kept, only scoring redone
    _wait_done(audit_dir)
    assert {k: (fold_dir(audit_dir, k) / "events.jsonl").read_bytes() for k in (1, 2)} == events
    # scored again in another process (another BLAS thread count: another summation order), so equal up to
    # rounding: 2β times logp_sum_atol of the longest completion, at most max_seq_len = 64 tokens
    again = {s["line"]: s["score"] for s in json.loads((audit_dir / "audit.json").read_text())["suspects"]}
    first = {s["line"]: s["score"] for s in json.loads(results)["suspects"]}
    assert again.keys() == first.keys()
    assert all(again[ln] == pytest.approx(first[ln], abs=2 * 0.1 * logp_sum_atol(64)) for ln in first)
    assert audited["data"].read_bytes() == audited["before"]


@pytest.mark.slow
def test_the_reward_recomputed_by_hand_through_mlx_lm(audited: dict) -> None:
    """r = β·(Σ log π − Σ log π_ref) over the completion tokens, π = base + the fold's adapter loaded by mlx_lm,
    π_ref = the base alone, from one unbatched forward each, against what the audit computed batched.

    Tolerance: each summed log-prob is T float32 terms of size about log V, evaluated with a different
    reduction order here (unpadded, one sequence) than in the audit (padded batches), so the two sums may
    differ by about √T·ε·T·log V (tests.conftest.logp_sum_atol's random walk of one-ulp errors); the reward is
    β times a difference of two such sums, so it may differ by 2β times that."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm

    from tunedeck.core import data as D
    from tunedeck.core.template import encode_example

    audit_dir, out = audited["audit_dir"], audited["out"]
    top = out["suspects"][0]
    cfg, _ = C.load(fold_dir(audit_dir, top["fold"]) / "config.toml")
    ex = next(e for e in D.load(audited["data"]).examples if e.line == top["line"])

    def summed_logps(adapter: Path | None) -> tuple[float, int]:
        model, tok = mlx_lm.load(out["model_dir"], adapter_path=str(adapter) if adapter else None)
        model.set_dtype(mx.float32)
        enc = encode_example(tok, ex, cfg.data.max_seq_len, "last")
        ids = mx.array(enc.ids)[None]
        logp = nn.log_softmax(model(ids[:, :-1]).astype(mx.float32), axis=-1)[0]
        targets = enc.ids[1:]
        picked = [logp[i, targets[i]].item() for i in range(enc.prompt_len - 1, len(enc.ids) - 1)]
        return math.fsum(picked), len(picked)

    policy, tokens = summed_logps(fold_dir(audit_dir, top["fold"]) / "adapters")
    reference, _ = summed_logps(None)
    atol = logp_sum_atol(tokens)
    scored = json.loads(scores_file(audit_dir, top["fold"]).read_text())
    i = scored["lines"].index(top["line"])
    assert scored["logps"][i] == pytest.approx(policy, abs=atol)
    assert scored["ref_logps"][i] == pytest.approx(reference, abs=atol)
    assert top["reward"] == pytest.approx(cfg.kto.beta * (policy - reference), abs=2 * cfg.kto.beta * atol)
    assert abs(top["reward"]) > 2 * cfg.kto.beta * atol  # not a trivially zero reward


@pytest.mark.slow
def test_a_stopped_audit_resumes_its_fold(tmp_path: Path, demo_model: Path) -> None:
    config = _workspace(tmp_path, iters=40)
    audit_dir = audit.start_audit(config, audit_dir=tmp_path / "audit")
    first = fold_dir(audit_dir, 1)
    wait_for(lambda: any(e["type"] == "step" for e in runs.read_events(first)), TIMEOUT, "fold 1's first step")
    status = audit.stop_audit(audit_dir)
    assert status.state == "stopped" and status.folds[0].status == "stopped", status
    assert status.folds[1].status == "new"
    assert audit.start_audit(config, audit_dir=tmp_path / "audit") == audit_dir
    status = _wait_done(audit_dir)
    starts = [e for e in runs.read_events(first) if e["type"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"] is not None  # resumed from its checkpoint
    assert [f.status for f in status.folds] == ["finished", "finished"]
    assert sorted(s.line for s in audit.load_results(audit_dir)) == list(range(1, 25))


# --- bad input: one line, exit 1, nothing written ----------------------------------------------------------


def _one_line_error(r, *parts: str) -> None:
    assert r.code == 1, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunedeck: error: "), r.err
    for part in parts:
        assert part in lines[0], lines[0]
    assert "Traceback" not in r.err


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "kto", n=24)
    _one_line_error(cli("data", "audit", str(tmp_path / "missing.toml")), "missing.toml", "no such config file")
    _one_line_error(cli("data", "audit", str(tmp_path)), "neither a config file nor a run directory")
    _one_line_error(cli("data", "audit", str(config), "--folds", "1"), "folds must be at least 2")
    _one_line_error(cli("data", "audit", str(config), "--folds", "25"), "folds = 25", "24 examples")
    _one_line_error(cli("data", "audit", str(config), "--top", "0"), "--top must be at least 1")
    _one_line_error(cli("data", "audit", str(config), "--iters", "0"), "iters must be 1 to")
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\niters = "many"\n', encoding="utf-8")
    _one_line_error(cli("data", "audit", str(bad)), "bad.toml", "train.iters")
    assert not (tmp_path / "audits").exists()


def test_a_dataset_with_errors_is_refused(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "kto", n=24)
    data = tmp_path / "data.jsonl"
    before = data.read_text(encoding="utf-8") + '{"conversations": [}\n' + '{"label": true}\n'
    data.write_text(before, encoding="utf-8")
    _one_line_error(cli("data", "audit", str(config)), f"{data}:25", "2 errors", "tunedeck data check")
    assert data.read_text(encoding="utf-8") == before and not (tmp_path / "audits").exists()


def test_a_dataset_without_both_labels_is_refused(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "sft", n=24)
    data = tmp_path / "data.jsonl"
    kept = [line for line in data.read_text(encoding="utf-8").splitlines() if json.loads(line)["label"]]
    data.write_text("\n".join(kept) + "\n", encoding="utf-8")
    _one_line_error(cli("data", "audit", str(config)), "20 desirable and 0 undesirable", "no labels to audit")
    assert not (tmp_path / "audits").exists()


def test_a_run_directory_is_audited_through_its_frozen_config(tmp_path: Path) -> None:
    from tunedeck.core.run_prep import prepare_run

    config = tiny_config(tmp_path, "kto", n=24)
    cfg, _ = C.load(config)
    run_dir = prepare_run(cfg, config, tmp_path / "runs")
    _one_line_error(cli("data", "audit", str(run_dir), "--folds", "30"), "folds = 30", str(tmp_path / "data.jsonl"))


def test_other_settings_are_another_audit(tmp_path: Path) -> None:
    """The default directory follows the data and every setting of the folds' runs, so a changed config never
    reuses stale folds; an explicit directory that holds another audit is refused by name, unchanged."""
    from tunedeck.core.audit_plan import check_plan, load_dataset, make_plan, source_config, write_plan

    config = tiny_config(tmp_path, "kto", n=24)
    cfg, path = source_config(config)
    ds = load_dataset(cfg)
    plan = make_plan(config, cfg, ds, 2, None)
    cfg.lora.rank = 2
    other = make_plan(config, cfg, ds, 2, None)
    assert audit.default_dir(path, plan) != audit.default_dir(path, other)
    assert audit.default_dir(path, plan) == audit.default_dir(path, make_plan(config, source_config(config)[0], ds, 2, None))
    write_plan(tmp_path / "held", plan, ds, source_config(config)[0])  # prepared, nothing started
    assert check_plan(tmp_path / "held", plan)
    before = (tmp_path / "held" / "plan.json").read_bytes()
    C.save(cfg, config)
    _one_line_error(cli("data", "audit", str(config), "--audit-dir", str(tmp_path / "held")),
                    "holds an audit of other data or settings")
    assert (tmp_path / "held" / "plan.json").read_bytes() == before


def test_folds_are_stratified_and_balanced() -> None:
    from tunedeck.core.audit_plan import assign_folds

    labels = [True] * 17 + [False] * 6
    for k in (2, 3, 5):
        folds = assign_folds(labels, k, seed=0)
        sizes = [folds.count(f) for f in range(1, k + 1)]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(labels)
        for label in (True, False):
            per = [sum(1 for f, lab in zip(folds, labels) if f == fold and lab is label) for fold in range(1, k + 1)]
            assert max(per) - min(per) <= 1  # each label dealt out evenly
        assert assign_folds(labels, k, seed=0) == folds and assign_folds(labels, k, seed=1) != folds
