"""`tunedeck export`: fused model (verified by logits) and the PEFT adapter layout and math (GGUF: test_export_gguf.py)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.conftest import run_cli
from tunedeck.core import export
from tunedeck.core.config import preset
from tunedeck.core.model import ADAPTER_CONFIG, ADAPTER_FILE

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def make_run(root: Path, quantize: int = 0, lora_type: str = "lora", num_layers: int = -1,
             model: str | None = None) -> Path:
    """A run directory with a demo-model adapter whose B matrices are random (so it changes the logits);
    `model`: another base than the default demo model (e.g. one built with Mistral's v3 tokenizer)."""
    from tunedeck.core.model import load_for_training, write_adapters
    from tunedeck.core.run_prep import prepare_run

    cfg = preset("demo", str(SAMPLE / "notes_tool_use.jsonl"))
    if model is not None:
        cfg.model.path = model
    cfg.model.quantize = quantize
    cfg.lora.type = lora_type
    cfg.lora.num_layers = num_layers
    cfg.lora.keys = ["q_proj", "v_proj", "down_proj"]
    run = prepare_run(cfg, None, root, root / "run")
    loaded = load_for_training(cfg.model, cfg.lora, "float32")
    mx.random.seed(3)
    for _, m in loaded.model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape)
    (run / "adapters").mkdir()
    write_adapters(loaded.model, loaded.adapter_config, run / "adapters")
    return run


@pytest.fixture(scope="module")
def run(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("exportrun"))


def _ids(tok) -> mx.array:
    from tunedeck.core.template import encode_prompt

    return mx.array([encode_prompt(tok, [{"role": "user", "content": "open my garden note and add a line"}])])


def test_fused_model_matches_base_plus_adapter(run: Path, demo_model: Path, tmp_path: Path) -> None:
    import mlx_lm

    out = tmp_path / "fused"
    r = run_cli("export", str(run), "--fuse", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert "export: verified: max |logit diff|" in r.stderr
    assert report["max_abs_diff"] <= report["tolerance"] <= 1e-3
    assert report["adapter_effect"] > 0.1 > 100 * report["max_abs_diff"]  # the check can tell adapter from no adapter
    assert report["layers_fused"] == 3 * 4
    # independently: mlx_lm.load(fused) against mlx_lm.load(base, adapter_path=...)
    fused, tok = mlx_lm.load(str(out))
    ref, _ = mlx_lm.load(str(demo_model), adapter_path=str(run / "adapters"))
    base, _ = mlx_lm.load(str(demo_model))
    for m in (fused, ref, base):
        m.set_dtype(mx.float32)
    ids = _ids(tok)
    got, want, plain = (np.array(m(ids)) for m in (fused, ref, base))
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(plain - want).max() > 0.1
    assert not any("lora" in k for k in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    # a fused directory also serves as a base model (eval/chat --model)
    from tunedeck.core.evaluate import load_run_model

    assert load_run_model(run, model=str(out)).model_dir == out


def test_fuse_refuses_existing_output_and_fails_verification_cleanly(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    r = run_cli("export", str(run), "--fuse", str(out))
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr
    target = tmp_path / "never"
    with pytest.raises(export.ExportError, match="verification failed: .* differ by up to"):
        export.fuse(run, target, tolerance=-1.0)
    assert not target.exists() and not list(tmp_path.glob("never*"))


def test_fuse_quantized_base(demo_model: Path, tmp_path: Path) -> None:
    import mlx.nn as nn
    import mlx_lm

    qrun = make_run(tmp_path / "q", quantize=4)
    report = export.fuse(qrun, tmp_path / "deq")
    assert report["max_abs_diff"] <= report["tolerance"] and not report["quantized"]
    assert "de-quantized" in report["notes"][0]
    report = export.fuse(qrun, tmp_path / "req", requantize=True)
    assert report["quantized"] and "re-quantized" in report["notes"][0]
    model, _ = mlx_lm.load(str(tmp_path / "req"))
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def test_hf_peft_export_layout_and_math(run: Path, tmp_path: Path) -> None:
    """W x + scale·(x a) b (MLX) equals W x + (alpha/r)·B (A x) (PEFT) with the exported tensors."""
    from mlx_lm.tuner.utils import load_adapters

    from tunedeck.core.model import load_base

    out = tmp_path / "peft"
    report = export.export_hf(run, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    acfg = json.loads((run / "adapters" / ADAPTER_CONFIG).read_text())
    r, scale = acfg["lora_parameters"]["rank"], acfg["lora_parameters"]["scale"]
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == r == report["r"]
    assert cfg["lora_alpha"] == scale * r and cfg["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert cfg["layers_to_transform"] is None and cfg["use_dora"] is False
    peft = mx.load(str(out / "adapter_model.safetensors"))
    mlx = mx.load(str(run / "adapters" / ADAPTER_FILE))
    assert len(peft) == len(mlx) == 2 * 3 * 4
    key = "base_model.model.model.layers.2.mlp.down_proj"
    A, B = peft[f"{key}.lora_A.weight"], peft[f"{key}.lora_B.weight"]
    assert A.shape == (r, 768) and B.shape == (256, r)  # [r, in], [out, r]
    assert mx.array_equal(A, mlx["model.layers.2.mlp.down_proj.lora_a"].T)
    # the real MLX LoRA layer against the PEFT formula on a random input
    model, _, _ = load_base(preset("demo").model, "float32")
    load_adapters(model, str(run / "adapters"))
    model.eval()  # no LoRA dropout
    layer = model.model.layers[2].mlp.down_proj
    x = mx.random.normal((3, 768), key=mx.random.key(0))
    W = layer.linear.weight
    y_mlx = layer(x)
    y_peft = x @ W.T + (cfg["lora_alpha"] / cfg["r"]) * ((x @ A.T) @ B.T)
    assert mx.abs(y_mlx - y_peft).max().item() < 1e-4
    assert mx.abs(y_mlx - x @ W.T).max().item() > 1e-2  # the adapter term is not negligible


def test_hf_export_subset_of_layers_and_refusals(demo_model: Path, tmp_path: Path) -> None:
    part = make_run(tmp_path / "part", num_layers=2)
    export.export_hf(part, tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [2, 3] and cfg["layers_pattern"] == "layers"
    dora = make_run(tmp_path / "dora", lora_type="dora")
    fused = export.fuse(dora, tmp_path / "dora-fused")  # DoRA fuses (mlx-lm's DoRALinear.fuse)
    assert fused["max_abs_diff"] <= fused["tolerance"] and fused["adapter_effect"] > 0.1
    r = run_cli("export", str(dora), "--hf", str(tmp_path / "d"))
    assert r.returncode == 1 and "'dora'" in r.stderr and "Traceback" not in r.stderr


def test_bad_input_is_a_clean_error(tmp_path: Path) -> None:
    r = run_cli("export", str(tmp_path), "--hf", str(tmp_path / "out"))
    assert r.returncode == 1 and "not a run directory" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.toml").write_text(preset("demo").to_toml())
    r = run_cli("export", str(tmp_path), "--fuse", str(tmp_path / "out"))
    assert r.returncode == 1 and "no adapters yet" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("export", str(tmp_path))
    assert r.returncode == 2 and "one of the arguments --fuse --gguf --ollama --hf is required" in r.stderr
