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


# --- what "demo" means, and the pre-trained demo model ---------------------------------------------------


def test_demo_means_the_pretrained_model_unless_the_env_says_random(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunedeck.core import demo

    monkeypatch.delenv(demo.PRETRAINED_ENV)  # the suite sets it to "0" (tests/conftest.py)
    assert not demo.random_by_default() and demo.default_size() == demo.DEMO_SIZE
    assert demo.default_dir().name.startswith("demo-model-pretrained-")
    monkeypatch.setenv(demo.PRETRAINED_ENV, "0")
    assert demo.random_by_default() and demo.default_size() == demo.RANDOM_SIZE
    assert demo.default_dir() == demo.cache_root() / "demo-model"


@pytest.mark.parametrize(("size", "tokenizer"), [("tiny", "demo"), ("7b", "demo"), ("nano", "mistral-v3")])
def test_only_the_nano_shape_with_the_demo_tokenizer_is_pretrained(tmp_path: Path, size: str, tokenizer: str) -> None:
    from tunedeck.core import demo

    with pytest.raises(ValueError, match="only the nano shape with the demo tokenizer is pre-trained"):
        demo.build(tmp_path / "m", size=size, tokenizer=tokenizer, steps=2)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_pretrained_build_is_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ensure()` with the pre-trained default, RECIPE cut to 4 steps (the real one takes ~2 minutes)."""
    import dataclasses

    import mlx_lm

    from tunedeck.core import demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(demo.PRETRAINED_ENV)
    full_recipe_dir = demo.default_dir()
    monkeypatch.setattr(demo, "RECIPE", dataclasses.replace(demo.RECIPE, steps=4))
    said: list[str] = []
    built = demo.ensure(progress=said.append)
    assert built == demo.default_dir() != full_recipe_dir  # the recipe is part of the cache key
    assert any("pre-training step 4/4" in m for m in said), said
    record = json.loads((built / "pretraining.json").read_text())
    assert record["recipe"]["steps"] == 4 and record["conversations"] == 1000
    assert 0 < record["trained_tokens"] < record["tokens"]  # the loss is on the assistant turns only
    again: list[str] = []
    assert demo.ensure(progress=again.append) == built and again == []  # cached: nothing rebuilt
    twin = demo.build(tmp_path / "twin", seed=0, steps=4)
    assert (twin / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    untrained = demo.build(tmp_path / "untrained", size=demo.DEMO_SIZE, seed=0)
    assert (untrained / "model.safetensors").read_bytes() != (built / "model.safetensors").read_bytes()
    model, tok = mlx_lm.load(str(built))  # the real loading path
    assert json.loads((built / "config.json").read_text())["hidden_size"] == demo.SIZES[demo.DEMO_SIZE]["hidden_size"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Find my garden notes"}], add_generation_prompt=True)
    assert isinstance(mlx_lm.generate(model, tok, prompt=prompt, max_tokens=4), str)
