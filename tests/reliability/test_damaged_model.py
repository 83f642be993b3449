"""Model directories that are damaged or lie: truncated weights and adapters, garbage adapter configs, config.json
dimensions that disagree with the weights, a full disk during export. Each is one message naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import make_run
from tunedeck.core import config as C
from tunedeck.core import model as M

pytestmark = pytest.mark.reliability


def _copy(tmp_path: Path, demo_model: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(demo_model, d, symlinks=True)
    return d


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("key,value", [("num_hidden_layers", 10**7), ("hidden_size", 10**9), ("vocab_size", 10**12),
                                       ("num_attention_heads", 10**6), ("num_key_value_heads", 10**6),
                                       ("num_hidden_layers", "many")])
def test_absurd_dimensions_are_refused_before_building(tmp_path: Path, demo_model: Path, key: str, value) -> None:
    d = _copy(tmp_path, demo_model)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(M.ModelError) as exc:
        M.load_base(C.ModelConfig(path=str(d)), "float32")
    msg = str(exc.value)
    assert msg.startswith(f"{d / 'config.json'}: {key} = {value!r}"), msg


def test_truncated_base_weights(tmp_path: Path, demo_model: Path) -> None:
    d = _copy(tmp_path, demo_model)
    _truncate(d / "model.safetensors")
    with pytest.raises(M.ModelError, match=r"model\.safetensors: truncated"):
        M.load_base(C.ModelConfig(path=str(d)), "float32")
    with pytest.raises(M.ModelError, match=r"model\.safetensors: truncated"):
        M.load_for_inference(str(d))


@pytest.fixture
def trained_run(tmp_path_factory) -> Path:
    """A finished tiny run (1 step), with its adapter."""
    ws = tmp_path_factory.mktemp("ws")
    run = make_run(ws, "sft", iters=1)
    r = run_cli("train", "--resume", str(run), timeout=300)
    assert r.returncode == 0, r.stderr
    return run


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated adapters.safetensors", "garbage adapter_config.json",
                                    "truncated model.safetensors"])
def test_damaged_files_in_every_command(tmp_path: Path, demo_model: Path, trained_run: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    model_dir = _copy(tmp_path, demo_model)
    cfg, _ = C.load(run / "config.toml")
    cfg.model.path = str(model_dir)
    C.save(cfg, run / "config.toml")
    target = {"truncated adapters.safetensors": run / "adapters" / "adapters.safetensors",
              "garbage adapter_config.json": run / "adapters" / "adapter_config.json",
              "truncated model.safetensors": model_dir / "model.safetensors"}[damage]
    if target.suffix == ".json":
        target.write_text("{not json")
    else:
        _truncate(target)
    calls = {"chat": ("chat", run, "--prompt", "hi", "--max-tokens", "2"),
             "eval": ("eval", run, "--max-tokens", "0"),
             "export": ("export", run, "--fuse", tmp_path / "fused"),
             "export --hf": ("export", run, "--hf", tmp_path / "peft")}
    if damage == "truncated model.safetensors":
        calls["train"] = ("train", run / "config.toml", "--run-dir", tmp_path / "run2")
        del calls["export --hf"]  # needs no base weights
    for name, args in calls.items():
        r = run_cli(*map(str, args), timeout=300)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert str(target) in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
    assert not (tmp_path / "fused").exists() and not (tmp_path / "peft").exists()


def test_export_disk_full_leaves_nothing(tmp_path: Path, trained_run: Path, monkeypatch) -> None:
    """MLX raises RuntimeError (not OSError) on a full disk: the export says which output and leaves nothing."""
    import mlx.core as mx

    from tunedeck.core import export

    real = mx.save_safetensors

    def full(path, *a, **k):
        real(path, *a, **k)
        raise RuntimeError("[write] Unable to write 8 bytes to file.")

    monkeypatch.setattr(mx, "save_safetensors", full)
    out = tmp_path / "peft"
    with pytest.raises(export.ExportError, match=f"cannot write {out}: .*Unable to write"):
        export.export_hf(trained_run, out)
    assert list(tmp_path.iterdir()) == []
