"""Model directories that ship code: never run implicitly, refused with an explanation on every loading path
(training, chat, eval, export, `data check --model`), accepted for training only with model.trust_remote_code."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, tiny_config
from tunedeck.core import config as C
from tunedeck.core import model as M

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def evil_model(tmp_path: Path, demo_model: Path) -> tuple[Path, Path]:
    """A copy of the demo model whose config and tokenizer point at code that leaves a marker if it runs."""
    d = tmp_path / "evil-model"
    shutil.copytree(demo_model, d, symlinks=True)
    marker = tmp_path / "PWNED"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (d / "modeling_evil.py").write_text(code + "from mlx_lm.models.llama import Model, ModelArgs\n")
    (d / "tokenization_evil.py").write_text(code + "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    tcfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return d, marker


def test_core_never_enables_remote_code_itself() -> None:
    pattern = re.compile(r"trust_remote_code\W{0,4}(=|:)\s*True")
    hits = [f"{p.relative_to(ROOT)}:{n}" for folder in ("core", "tui") for p in (ROOT / folder).rglob("*.py")
            for n, text in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(text)]
    assert hits == []
    assert C.Config().model.trust_remote_code is False
    assert C.preset("demo").model.trust_remote_code is False


@pytest.mark.parametrize("what", ["auto_map", "model_file", "python-file", "tokenizer-auto_map"])
def test_check_remote_code_names_what_it_found(tmp_path: Path, demo_model: Path, what: str) -> None:
    d = tmp_path / "m"
    shutil.copytree(demo_model, d, symlinks=True)
    if what == "python-file":
        (d / "custom.py").write_text("x = 1\n")
    else:
        name = "tokenizer_config.json" if what.startswith("tokenizer") else "config.json"
        cfg = json.loads((d / name).read_text())
        cfg[what.removeprefix("tokenizer-")] = {"AutoTokenizer": "x.Y"} if what.endswith("auto_map") else "x.py"
        (d / name).write_text(json.dumps(cfg))
    with pytest.raises(M.ModelError) as exc:
        M.check_remote_code(d, False)
    msg = str(exc.value)
    assert str(d) in msg and "never runs it implicitly" in msg and "model.trust_remote_code = true" in msg
    assert {"auto_map": "config.json: auto_map", "model_file": "config.json: model_file", "python-file": "custom.py",
            "tokenizer-auto_map": "tokenizer_config.json: auto_map"}[what] in msg
    M.check_remote_code(d, True)  # opted in


def _fake_run(tmp_path: Path, model_dir: Path) -> Path:
    """A run directory whose base model is `model_dir`, with an (unused) adapter."""
    run = tmp_path / "runs" / "20260101-000000-sft"
    (run / "adapters").mkdir(parents=True)
    cfg = C.preset("demo", str(tmp_path / "ws" / "data.jsonl"))
    cfg.model.path = str(model_dir)
    C.save(cfg, run / "config.toml")
    (run / "adapters" / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": 1, "base_model": str(model_dir),
         "lora_parameters": {"rank": 1, "scale": 1.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}}))
    (run / "adapters" / "adapters.safetensors").write_bytes(b"")
    return run


def test_every_loading_path_refuses_custom_code(tmp_path: Path, evil_model) -> None:
    model_dir, marker = evil_model
    config = tiny_config(tmp_path / "ws", "sft")
    run = _fake_run(tmp_path, model_dir)
    calls = {
        "train": ("train", config, "--set", f"model.path={model_dir}"),
        "chat run": ("chat", run, "--prompt", "hi", "--max-tokens", "2"),
        "chat adapter": ("chat", "--adapter", run / "adapters", "--model", model_dir, "--prompt", "hi"),
        "chat fused": ("chat", model_dir, "--prompt", "hi"),
        "eval": ("eval", run, "--max-tokens", "0"),
        "export": ("export", run, "--fuse", tmp_path / "fused"),
        "data check --model": ("data", "check", tmp_path / "ws" / "data.jsonl", "--model", model_dir),
    }
    for name, args in calls.items():
        r = cli(*args)
        assert r.code == 1, (name, r.out, r.err)
        assert "ships custom code" in r.err and "trust_remote_code" in r.err, (name, r.err)
        assert "Traceback" not in r.err
    assert not marker.exists()
    assert not (tmp_path / "fused").exists() and not (tmp_path / "ws" / "runs").exists()


def test_model_given_by_hub_id_is_checked_after_download(tmp_path: Path, evil_model, monkeypatch) -> None:
    """A Hugging Face id resolves to a snapshot directory; chat checks that directory, not just local paths."""
    import mlx_lm.utils

    model_dir, marker = evil_model
    monkeypatch.setattr(mlx_lm.utils, "_download", lambda repo, *a, **k: model_dir)
    with pytest.raises(M.ModelError, match="ships custom code"):
        M.load_for_inference("someone/evil-model")
    assert not marker.exists()


def test_tokenizer_only_loaders_do_not_run_tokenizer_code(evil_model) -> None:
    """The app's tokenizer loader (Data screen) goes through transformers, whose default refuses remote code:
    the custom class is not imported (the standard fast tokenizer is used)."""
    from tunedeck.tui.app import load_tokenizer

    model_dir, marker = evil_model
    tok = load_tokenizer(str(model_dir), lambda _msg: None)
    assert tok.encode("hello")
    assert not marker.exists()
