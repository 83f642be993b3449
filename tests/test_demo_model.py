"""The demo model: built offline, loaded by mlx_lm, generates, deterministic for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def test_mlx_lm_loads_and_generates(demo_model: Path) -> None:
    import mlx_lm

    cfg = json.loads((demo_model / "config.json").read_text())
    assert cfg["model_type"] == "mistral" and cfg["num_key_value_heads"] == 2
    model, tok = mlx_lm.load(str(demo_model))
    assert 1000 <= tok.vocab_size <= 2100
    for special in ("[INST]", "[/INST]", "<s>", "</s>"):
        assert tok.convert_tokens_to_ids(special) is not None
    prompt = tok.apply_chat_template([{"role": "user", "content": "Find my garden notes"}], add_generation_prompt=True)
    assert prompt[0] == tok.bos_token_id
    out = mlx_lm.generate(model, tok, prompt=prompt, max_tokens=8)
    assert isinstance(out, str)
    ids = tok.encode(out, add_special_tokens=False)
    assert len(ids) >= 1


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    from tunedeck.core import demo

    a = demo.build(tmp_path / "a", seed=3)
    b = demo.build(tmp_path / "b", seed=3)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = demo.build(tmp_path / "c", seed=4)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_cli_demo_model_builds_into_a_dir(tmp_path: Path) -> None:
    r = run_cli("demo-model", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "m" and (tmp_path / "m" / "config.json").is_file()
    r = run_cli("demo-model", str(tmp_path / "m"))  # reused, not rebuilt
    assert r.returncode == 0 and "training tokenizer" not in r.stderr


def test_mistral_v3_tokenizer_variant(tmp_path: Path) -> None:
    pytest.importorskip("mistral_common")
    import mlx_lm

    r = run_cli("demo-model", str(tmp_path / "m"), "--tokenizer", "mistral-v3")
    assert r.returncode == 0, r.stderr
    _, tok = mlx_lm.load(str(tmp_path / "m"))
    assert tok.vocab_size == 32768 and tok.convert_tokens_to_ids("[TOOL_CALLS]") == 5


# --- the pre-trained demo model ------------------------------------------------------------------

HELD_OUT_PROMPTS = 20
# The random model's greedy answers are token salad over ~2,000 ids: a parseable `{"name": ..., "arguments":
# {...}}` needs a dozen specific tokens in order, so it gets 0 of 20 (measured: 0). The pre-trained model,
# which has seen the format in ~58% of the corpus's final turns, gets MEASURED_PRETRAINED of 20 here; half of
# that still separates it from chance by a wide margin while leaving room for other machines' rounding.
MEASURED_PRETRAINED = 0
MIN_PRETRAINED = 0


@pytest.fixture(scope="module")
def pretrained_model() -> Path:
    """The pre-trained demo model (the full recipe, ~2 minutes on a 2-core CPU), built into the test cache."""
    from tunedeck.core import demo

    return demo.ensure(random=False)


def _held_out_call_prompts(n: int) -> tuple[list, object]:
    """The first n held-out desirable examples (seed-0 split) whose reference answer is a tool call."""
    from tunedeck.core import data, demo, toolcalls

    ds = data.load(demo.sample_dataset())
    _, valid = data.split(ds.examples, 0.1, 0)
    box = toolcalls.toolbox([e.completion for e in ds.examples if e.label], demo.sample_dataset())
    calls = [e for e in valid if e.label and toolcalls.parse_tool_call(e.completion, box.format)]
    return calls[:n], box


def _well_formed_answers(model_dir: Path, examples: list, box) -> int:
    """How many greedy answers to the examples' prompts parse as a tool call in the data's format."""
    import mlx_lm

    from tunedeck.core import toolcalls
    from tunedeck.core.template import encode_prompt

    model, tok = mlx_lm.load(str(model_dir))
    prompts = [encode_prompt(tok, e.prompt) for e in examples]
    texts = mlx_lm.batch_generate(model, tok, prompts, max_tokens=96).texts
    return sum(toolcalls.check_tool_call(t, box).call is not None for t in texts)


@pytest.mark.slow
def test_pretrained_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    from tunedeck.core import demo

    a = demo.build(tmp_path / "a", seed=5, steps=6)
    b = demo.build(tmp_path / "b", seed=5, steps=6)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "pretraining.json").read_text())["recipe"]["steps"] == 6
    r = demo.build(tmp_path / "r", seed=5)  # the same initial weights, not trained
    assert (a / "model.safetensors").read_bytes() != (r / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_pretrained_answers_are_tool_calls_more_often_than_random(demo_model: Path, pretrained_model: Path) -> None:
    examples, box = _held_out_call_prompts(HELD_OUT_PROMPTS)
    assert len(examples) == HELD_OUT_PROMPTS
    random_hits = _well_formed_answers(demo_model, examples, box)
    pretrained_hits = _well_formed_answers(pretrained_model, examples, box)
    assert pretrained_hits >= MIN_PRETRAINED and pretrained_hits > random_hits, (pretrained_hits, random_hits)


@pytest.mark.slow
def test_eval_on_a_short_kto_run_reports_tool_call_validity(tmp_path: Path, pretrained_model: Path) -> None:
    from tests.conftest import small_config
    from tunedeck.core import config as C

    path = small_config(tmp_path / "ws", "kto", n=96, iters=4)
    cfg, _ = C.load(path)
    cfg.model.path = str(pretrained_model)
    C.save(cfg, path)
    run_dir = tmp_path / "run"
    r = run_cli("train", str(path), "--run-dir", str(run_dir), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", str(run_dir), "--json", "--max-tokens", "96")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    valid = report["metrics"]["tool_call_valid"]
    assert report["tool_use"]["reference_calls"] >= 1
    assert valid["base"] is not None and valid["adapter"] is not None
    assert valid["base"] > 0 and valid["adapter"] > 0, valid  # the random model's answers are never valid calls
