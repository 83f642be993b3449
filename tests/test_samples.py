"""Live samples during training (core.samples): `sample` events at every train.sample_every steps and at the
last, K prompts each, their text equal to mlx-lm's own greedy generation from the checkpoint of that step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import tiny_config
from tunedeck.core import config as C
from tunedeck.core import toolcalls
from tunedeck.core.run_prep import split_examples

pytestmark = pytest.mark.slow


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def _train(ws: Path, method: str, **train: object) -> Path:
    config = tiny_config(ws, method, **train)
    cfg, _ = C.load(config)
    cfg.data.max_seq_len = 512  # the sampled prompts fit whole: nothing is cut before generation
    C.save(cfg, config)
    run_dir = ws / "run"
    r = run_cli("train", str(config), "--run-dir", str(run_dir), cwd=ws)
    assert r.returncode == 0, r.stderr
    return run_dir


def test_kto_run_samples_its_prompts_as_mlx_lm_generates(tmp_path: Path, demo_model: Path) -> None:
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    run_dir = _train(tmp_path, "kto", iters=5, sample_every=2, sample_prompts=2, sample_tokens=16, save_every=1,
                     keep_checkpoints=0)
    found = _events(run_dir, "sample")
    assert [(e["step"], e["prompt"]) for e in found] == [(2, 0), (2, 1), (4, 0), (4, 1), (5, 0), (5, 1)]
    assert all(0 < e["tokens"] <= 16 for e in found)

    cfg, _ = C.load(run_dir / "config.toml")
    train, valid, _ = split_examples(cfg, cfg.data.path)
    model, tok = mlx_lm.load(str(demo_model), adapter_path=str(run_dir / "checkpoints" / "step-000005"))
    box = toolcalls.toolbox([e.completion for e in train + valid if e.label], cfg.data.path)
    for e in found[-2:]:  # the last step's answers, generated again independently
        example = valid[e["prompt"]]
        ids = tok.apply_chat_template(example.prompt, add_generation_prompt=True, tokenize=True)
        assert len(ids) <= cfg.data.max_seq_len - 16  # not cut
        expected = mlx_lm.generate(model, tok, ids, max_tokens=16, sampler=make_sampler(temp=0.0))
        assert e["text"] == expected
        is_call = toolcalls.parse_tool_call(example.completion, box.format) is not None
        assert e["valid"] == (toolcalls.check_tool_call(expected, box).ok if is_call else None)
        assert e["question"] == next(m["content"] for m in reversed(example.prompt) if m["role"] == "user")


def test_sample_every_zero_writes_none(tmp_path: Path, demo_model: Path) -> None:
    run_dir = _train(tmp_path, "sft", iters=3, sample_every=0)
    assert _events(run_dir, "done") and not _events(run_dir, "sample")
