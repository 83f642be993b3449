"""The peak-memory forecast: against measured peaks on this machine, verdicts, suggestions, model configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunedeck.core import config as C
from tunedeck.core import demo, memory


def demo_cfg(method: str = "sft", batch: int = 2, seq: int = 128, grad_checkpoint: bool = False) -> C.Config:
    cfg = C.preset("demo")
    cfg.train.method, cfg.train.batch_size, cfg.train.grad_checkpoint = method, batch, grad_checkpoint
    cfg.data.max_seq_len = seq
    return cfg


def mistral_cfg(quantize: int = 4, batch: int = 4, seq: int = 2048, method: str = "kto") -> C.Config:
    cfg = C.Config()  # the mac-24gb preset: Mistral-7B, LoRA r16 on q, k, v, o, grad checkpointing
    cfg.model.quantize, cfg.train.batch_size, cfg.data.max_seq_len, cfg.train.method = quantize, batch, seq, method
    return cfg


# --- against measurements: the trainer's own step on a random tiny model, in this process (~5 s) ---

@pytest.mark.parametrize(("method", "batch", "seq", "gc"), [
    ("sft", 2, 128, False),
    ("sft", 4, 256, True),
    ("kto", 2, 128, True),
    ("kto", 4, 256, False),
])
def test_forecast_within_15_percent_of_measured_peak(method: str, batch: int, seq: int, gc: bool) -> None:
    cfg = demo_cfg(method, batch, seq, gc)
    mc = demo.model_config("tiny")
    measured = memory.measure_peak(cfg, steps=2, model_config=mc)
    fc = memory.forecast(cfg, mc, budget_gb=100.0, backend="cpu")
    assert abs(fc.phases["train"] - measured["step_gb"]) / measured["step_gb"] <= 0.15, (fc, measured)
    if method == "kto":
        assert abs(fc.phases["reference"] - measured["reference_gb"]) / measured["reference_gb"] <= 0.15
    assert abs(fc.total_gb - measured["peak_gb"]) / measured["peak_gb"] <= 0.15


def test_measure_peak_leaves_no_grad_checkpoint_patch_behind() -> None:
    from mlx_lm.models import llama

    before = llama.TransformerBlock.__call__
    memory.measure_peak(demo_cfg(grad_checkpoint=True, seq=32), steps=1, model_config=demo.model_config("tiny"))
    assert llama.TransformerBlock.__call__ is before


# --- the forecast's own logic -----------------------------------------------------------------------

def test_parts_add_up_and_grow_with_the_batch() -> None:
    mc = demo.model_config("small")
    small = memory.forecast(demo_cfg(batch=2), mc, budget_gb=10.0, backend="cpu")
    big = memory.forecast(demo_cfg(batch=8), mc, budget_gb=10.0, backend="cpu")
    for fc in (small, big):
        assert sum(fc.parts.values()) == pytest.approx(fc.total_gb, rel=1e-3)
        assert set(memory.Forecast.__dataclass_fields__["parts"].type.split("[")[0:1]) or True
        for name in ("weights", "adapters", "optimizer", "gradients", "activations", "logits", "kl_forward", "overhead"):
            assert name in fc.parts
    assert big.parts["activations"] > small.parts["activations"] and big.total_gb > small.total_gb
    assert big.parts["weights"] == small.parts["weights"]
    longer = memory.forecast(demo_cfg(batch=2), mc, budget_gb=10.0, seq_len=512, backend="cpu")
    fewer_logits = memory.forecast(demo_cfg(batch=2), mc, budget_gb=10.0, completion_len=16, backend="cpu")
    assert longer.total_gb > small.total_gb and longer.seq_len == 513
    assert fewer_logits.total_gb <= small.total_gb and fewer_logits.completion_len == 16


def test_verdict_thresholds() -> None:
    cfg, mc = demo_cfg(), demo.model_config("tiny")
    total = memory.forecast(cfg, mc, budget_gb=100.0, backend="cpu").total_gb
    assert memory.forecast(cfg, mc, budget_gb=total / 0.85 * 1.001, backend="cpu").verdict == "fits"
    assert memory.forecast(cfg, mc, budget_gb=total / 0.85 * 0.99, backend="cpu").verdict == "tight"
    assert memory.forecast(cfg, mc, budget_gb=total * 1.001, backend="cpu").verdict == "tight"
    assert memory.forecast(cfg, mc, budget_gb=total * 0.99, backend="cpu").verdict == "won't fit"


def _suggested_value(text: str) -> tuple[str, float]:
    m = re.fullmatch(r"(.+?) → ([\d.]+) GB", text)
    assert m, text
    return m.group(1), float(m.group(2))


@pytest.mark.parametrize("budget", [24.0, 16.0])
def test_suggestions_are_lower_and_fit(budget: float) -> None:
    cfg = mistral_cfg(quantize=0, batch=8, seq=4096, method="sft")
    cfg.train.grad_checkpoint = False
    fc = memory.forecast(cfg, budget_gb=budget, backend="metal")
    assert fc.verdict == "won't fit"
    assert 1 <= len(fc.suggestions) <= 2
    for s in fc.suggestions:
        change, gb = _suggested_value(s)
        assert gb < fc.total_gb and gb <= budget
        key_value = change.split(" (")[0]
        if re.fullmatch(r"[a-z_]+\.[a-z_]+ = \S+", key_value):  # a plain config change: it gives that forecast
            edited = C.Config(**{k: v for k, v in vars(cfg).items()})
            edited = C.loads(cfg.to_toml())[0]
            assert C.apply_overrides(edited, [key_value.replace(" ", "")]) == []
            seq = edited.data.max_seq_len
            again = memory.forecast(edited, budget_gb=budget, backend="metal", seq_len=seq)
            assert again.total_gb == pytest.approx(gb, abs=0.051)


def test_no_suggestions_when_it_fits() -> None:
    fc = memory.forecast(demo_cfg(), demo.model_config("tiny"), budget_gb=100.0, backend="cpu")
    assert fc.verdict == "fits" and fc.suggestions == []


def test_unknown_model_says_so() -> None:
    cfg = demo_cfg()
    cfg.model.path = "nobody/no-such-model-xyz"
    fc = memory.forecast(cfg, budget_gb=8.0, backend="cpu")
    assert fc.verdict == "unknown" and fc.parts == {} and fc.notes


# --- model configs and the machine ------------------------------------------------------------------

def test_model_config_for_demo_does_not_build_it() -> None:
    existed = (demo.default_dir() / "config.json").is_file()
    mc = memory.model_config_for("demo")
    assert mc is not None and mc["hidden_size"] == 256 and mc["num_hidden_layers"] == 4
    assert 1000 <= mc["vocab_size"] <= 2100
    assert (demo.default_dir() / "config.json").is_file() == existed


def test_model_config_for_a_local_dir(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    assert memory.model_config_for(str(d)) is None  # no config.json
    (d / "config.json").write_text(json.dumps(demo.model_config("small")))
    (d / "model.safetensors").write_bytes(b"\0" * 1000)
    mc = memory.model_config_for(str(d))
    assert mc["hidden_size"] == 640 and mc["_checkpoint_bytes"] == 1000


def test_model_config_for_hf_ids() -> None:
    mc = memory.model_config_for("mistralai/Mistral-7B-Instruct-v0.3")
    assert (mc["hidden_size"], mc["num_hidden_layers"], mc["num_key_value_heads"], mc["vocab_size"]) == (4096, 32, 8, 32768)
    assert mc["head_dim"] == 128 and mc["tie_word_embeddings"] is False and mc["rope_theta"] == 1e6
    assert memory.model_config_for("nobody/no-such-model-xyz") is None


def test_machine_budget_is_some_of_this_machine() -> None:
    import psutil

    budget = memory.machine_budget_gb()
    assert 0 < budget <= psutil.virtual_memory().total / 1e9


# --- 7B: plausible numbers --------------------------------------------------------------------------

def test_mistral_7b_numbers_are_plausible() -> None:
    """What we predict for the default preset and its bf16 variant (Metal, bf16 compute).

    Mistral-7B 4-bit (group 64: 0.5625 bytes per weight, embedding bf16): weights ≈ 4.1 GB.
    LoRA r16 on q, k, v, o of 32 layers: 13.6 M parameters in float32 = 0.055 GB, ×3 with AdamW's
    m and v, ×4 with the gradient. KTO, batch 4 × 2048, grad checkpointing: the activations dominate.
    """
    fc = memory.forecast(mistral_cfg(), budget_gb=17.2, backend="metal", completion_len=512)
    assert 3.9 <= fc.parts["weights"] <= 4.3
    assert fc.parts["adapters"] == pytest.approx(0.0545, rel=0.02)
    assert fc.parts["optimizer"] == pytest.approx(2 * fc.parts["adapters"])
    assert 8 <= fc.phases["train"] <= 20
    assert fc.phases["load"] == pytest.approx(14.5 + 0.65 * fc.parts["weights"], rel=0.05)  # the bf16 checkpoint

    bf16 = memory.forecast(mistral_cfg(quantize=0), budget_gb=17.2, backend="metal", completion_len=512)
    assert 14.3 <= bf16.parts["weights"] <= 14.7
    assert bf16.verdict == "won't fit" and bf16.suggestions

    cuda = memory.forecast(mistral_cfg(batch=2, seq=1024), budget_gb=80.0, backend="cuda")
    assert cuda.parts["activations"] < memory.forecast(mistral_cfg(batch=2, seq=1024), budget_gb=80.0,
                                                        backend="metal").parts["activations"]
