"""The peak-memory forecast: against measured peaks on this machine, verdicts, suggestions, model configs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tunedeck.core import config as C
from tunedeck.core import demo, memory
from tunedeck.core.forecast import forecast
from tunedeck.core.memory_probe import measure_peak


def demo_cfg(method: str = "sft", batch: int = 2, seq: int = 128, grad_checkpoint: bool = False) -> C.Config:
    cfg = C.preset("demo")
    cfg.train.method, cfg.train.batch_size, cfg.train.grad_checkpoint = method, batch, grad_checkpoint
    cfg.data.max_seq_len = seq
    return cfg


def mistral_cfg(quantize: int = 4, batch: int = 4, seq: int = 2048, method: str = "kto") -> C.Config:
    cfg = C.Config()  # the mac-24gb preset: Mistral-7B, LoRA r16 on q, k, v, o, grad checkpointing
    cfg.model.quantize, cfg.train.batch_size, cfg.data.max_seq_len, cfg.train.method = quantize, batch, seq, method
    return cfg


# --- against measurements: the trainer's own step on a random tiny model, in this process ------------
# (float32 through MLX's reference BLAS, so kept small: ~15 s for both points)

@pytest.mark.parametrize(("method", "batch", "seq", "gc"), [
    ("sft", 2, 64, False),
    ("kto", 2, 64, True),
])
def test_forecast_within_15_percent_of_measured_peak(method: str, batch: int, seq: int, gc: bool) -> None:
    cfg = demo_cfg(method, batch, seq, gc)
    mc = demo.model_config("tiny")
    measured = measure_peak(cfg, steps=2, model_config=mc)
    fc = forecast(cfg, mc, budget_gb=100.0, backend="cpu")
    assert abs(fc.phases["train"] - measured["step_gb"]) / measured["step_gb"] <= 0.15, (fc, measured)
    if method == "kto":
        assert abs(fc.phases["reference"] - measured["reference_gb"]) / measured["reference_gb"] <= 0.15
    assert abs(fc.total_gb - measured["peak_gb"]) / measured["peak_gb"] <= 0.15


def test_measure_peak_leaves_no_grad_checkpoint_patch_behind() -> None:
    from mlx_lm.models import llama

    before = llama.TransformerBlock.__call__
    measure_peak(demo_cfg(grad_checkpoint=True, seq=32), steps=1, model_config=demo.model_config("tiny"))
    assert llama.TransformerBlock.__call__ is before


# --- the forecast's own logic -----------------------------------------------------------------------

def test_parts_add_up_and_grow_with_the_batch() -> None:
    mc = demo.model_config("small")
    small = forecast(demo_cfg(batch=2), mc, budget_gb=10.0, backend="cpu")
    big = forecast(demo_cfg(batch=8), mc, budget_gb=10.0, backend="cpu")
    for fc in (small, big):
        assert sum(fc.parts.values()) == pytest.approx(fc.total_gb, rel=1e-3)
        for name in ("weights", "adapters", "optimizer", "gradients", "activations", "logits", "kl_forward", "overhead"):
            assert name in fc.parts
    assert big.parts["activations"] > small.parts["activations"] and big.total_gb > small.total_gb
    assert big.parts["weights"] == small.parts["weights"]
    longer = forecast(demo_cfg(batch=2), mc, budget_gb=10.0, seq_len=512, backend="cpu")
    fewer_logits = forecast(demo_cfg(batch=2), mc, budget_gb=10.0, completion_len=16, backend="cpu")
    assert longer.total_gb > small.total_gb and longer.seq_len == 513
    assert fewer_logits.total_gb <= small.total_gb and fewer_logits.completion_len == 16


def test_verdict_thresholds() -> None:
    cfg, mc = demo_cfg(), demo.model_config("tiny")
    total = forecast(cfg, mc, budget_gb=100.0, backend="cpu").total_gb
    assert forecast(cfg, mc, budget_gb=total / 0.85 * 1.001, backend="cpu").verdict == "fits"
    assert forecast(cfg, mc, budget_gb=total / 0.85 * 0.99, backend="cpu").verdict == "tight"
    assert forecast(cfg, mc, budget_gb=total * 1.001, backend="cpu").verdict == "tight"
    assert forecast(cfg, mc, budget_gb=total * 0.99, backend="cpu").verdict == "won't fit"


def _suggested_value(text: str) -> tuple[str, float]:
    m = re.fullmatch(r"(.+?) → ([\d.]+) GB", text)
    assert m, text
    return m.group(1), float(m.group(2))


@pytest.mark.parametrize(("quantize", "batch", "seq", "gc", "budget"), [
    (4, 8, 2048, False, 24.0),  # single changes fit
    (0, 8, 4096, False, 16.0),  # only a combination fits
    (4, 4, 2048, True, 11.0),  # the default preset on a 16 GB Mac (~11 GB for the GPU)
])
def test_suggestions_are_lower_and_fit(quantize: int, batch: int, seq: int, gc: bool, budget: float) -> None:
    cfg = mistral_cfg(quantize=quantize, batch=batch, seq=seq, method="sft")
    cfg.train.grad_checkpoint = gc
    fc = forecast(cfg, budget_gb=budget, backend="metal", completion_len=256)
    assert fc.verdict == "won't fit"
    assert 1 <= len(fc.suggestions) <= 2
    for s in fc.suggestions:
        change, gb = _suggested_value(s)
        assert gb < fc.total_gb and gb <= budget
        items = [c.strip().split(" (")[0] for c in change.split(", ")]
        if all(re.fullmatch(r"[a-z_]+\.[a-z_]+ = \S+", i) for i in items):  # plain config keys: that is their forecast
            edited = C.loads(cfg.to_toml())[0]
            assert C.apply_overrides(edited, [i.replace(" ", "") for i in items]) == []
            seq_len = min(seq, edited.data.max_seq_len)
            again = forecast(edited, budget_gb=budget, backend="metal", seq_len=seq_len, completion_len=256)
            assert again.total_gb == pytest.approx(gb, abs=0.051)


def test_no_suggestions_when_it_fits() -> None:
    fc = forecast(demo_cfg(), demo.model_config("tiny"), budget_gb=100.0, backend="cpu")
    assert fc.verdict == "fits" and fc.suggestions == []


def test_unknown_model_says_so() -> None:
    cfg = demo_cfg()
    cfg.model.path = "nobody/no-such-model-xyz"
    fc = forecast(cfg, budget_gb=8.0, backend="cpu")
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
    mc = memory.model_config_for(str(d))
    assert mc["hidden_size"] == 640 and mc["num_hidden_layers"] == 10


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
    """What we predict for Mistral-7B on Metal (bf16 compute), completions of 256 tokens.

    Weights: 4-bit with group 64 is 0.5625 bytes a weight, the embedding stays bf16: 4.27 GB (bf16: 14.50).
    LoRA r16 on q, k, v, o of 32 layers: 13.6 M float32 parameters = 0.055 GB; AdamW's m and v twice that.
    Predicted peaks (GB, train step / KTO reference pass / loading the bf16 checkpoint):
      4-bit  SFT 2x1024:  6.3            4x2048: 13.3      loading: 4.7 (4.27 + one bf16 layer)
      4-bit  KTO 2x1024:  6.2 / 5.0      4x2048: 12.9 / 6.5
      bf16   SFT 2x1024: 16.5            4x2048: 23.6
      bf16   KTO 2x1024: 16.4 / 15.2     4x2048: 23.1 / 16.7
    At 4x2048 with (layer-by-layer) checkpointing the activations (8.3 GB) are each layer's input
    (32 x B x T x 4096 x 2 bytes = 2.1 GB) plus one layer recomputed with Metal's unfused attention
    (B x 32 heads x T^2 probabilities: 1.07 GB a copy).
    """
    fc = forecast(mistral_cfg(), budget_gb=17.2, backend="metal", completion_len=256)
    assert 4.1 <= fc.parts["weights"] <= 4.4
    assert fc.parts["adapters"] == pytest.approx(0.0545, rel=0.02)
    assert fc.parts["optimizer"] == pytest.approx(2 * fc.parts["adapters"], rel=0.01)
    assert fc.phases["train"] == pytest.approx(12.9, rel=0.05)
    assert fc.phases["reference"] == pytest.approx(6.5, rel=0.05)
    # quantizing on load, a layer at a time: one bf16 layer beside the weights, (2 x 4096 x 4096 + 2 x 4096 x 1024
    # + 3 x 4096 x 14336) x 2 bytes = 0.436 GB
    assert fc.phases["load"] == pytest.approx(fc.parts["weights"] + 0.436, rel=0.01)
    assert fc.verdict == "fits"  # the default preset on a 24 GB Mac (17.2 GB for the GPU)
    tight = forecast(mistral_cfg(), budget_gb=11.0, backend="metal", completion_len=256)
    assert tight.verdict == "won't fit" and tight.suggestions
    small = forecast(mistral_cfg(batch=2, seq=1024), budget_gb=17.2, backend="metal", completion_len=256)
    assert small.phases["train"] == pytest.approx(6.2, rel=0.05)
    assert small.total_gb == pytest.approx(max(small.phases.values()))  # the peak is the largest phase's

    bf16 = forecast(mistral_cfg(quantize=0, method="sft", batch=2, seq=1024), budget_gb=17.2,
                           backend="metal", completion_len=256)
    assert 14.4 <= bf16.parts["weights"] <= 14.6
    assert bf16.phases["train"] == pytest.approx(16.5, rel=0.05)

    # CUDA fuses attention forward and backward when T is a multiple of 128: less than Metal
    cuda = forecast(mistral_cfg(batch=2, seq=1025), budget_gb=80.0, backend="cuda")
    metal = forecast(mistral_cfg(batch=2, seq=1025), budget_gb=80.0, backend="metal")
    assert cuda.parts["activations"] < metal.parts["activations"]


def test_cuda_forecast_within_15_percent_of_the_h200_measurements() -> None:
    """The forecast for CUDA (no terms of its own since MLX's CUDA graph limits are lowered) against the 7B peaks
    measured on an H200 by bench/forecast_7b.py (its raw output, bench/results/h200_forecast_7b.txt): every step, every KTO
    reference pass and every whole peak, the Mac-24GB preset at its full 2,048 context among them."""
    lines = (Path(__file__).resolve().parents[1] / "bench" / "results" / "h200_forecast_7b.txt").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(rows) >= 7 and any(r["batch"] == 4 and r["seq"] == 2048 and r["quantize"] == 4 for r in rows)
    mc = memory.model_config_for("mistralai/Mistral-7B-Instruct-v0.3")
    for r in rows:
        cfg = C.Config()
        cfg.model.quantize, cfg.model.dtype = r["quantize"], "bfloat16"
        cfg.lora.keys, cfg.lora.rank, cfg.lora.dropout = r["keys"], 16, 0.0
        cfg.train.batch_size, cfg.train.grad_checkpoint, cfg.train.method = r["batch"], r["grad_checkpoint"], r["method"]
        cfg.data.max_seq_len = r["seq"]
        cfg.train.lean_backward = r.get("lean_backward", "off")  # rows without it were measured before "auto"
        fc = forecast(cfg, mc, 140.0, seq_len=r["seq"], backend="cuda")
        m = r["measured"]
        assert abs(fc.phases["train"] - m["step_gb"]) / m["step_gb"] <= 0.15, r
        if m["reference_gb"]:
            assert abs(fc.phases["reference"] - m["reference_gb"]) / m["reference_gb"] <= 0.15, r
        assert abs(fc.total_gb - m["peak_gb"]) / m["peak_gb"] <= 0.15, r
    # train.lean_backward on and off, and its LoRA part alone (which the forecast does not model: off), bf16 SFT
    # 4 x 512 every token, the peak of bench/compare_mlx_lm.py's timed steps (bench/results/h200_lean_parts.txt)
    lines = (Path(__file__).resolve().parents[1] / "bench" / "results" / "h200_lean_parts.txt").read_text().splitlines()
    for r in (json.loads(line) for line in lines if line.startswith("{")):
        cfg = mistral_cfg(quantize=0, batch=4, seq=512, method="sft")
        cfg.model.dtype, cfg.train.grad_checkpoint = "bfloat16", False
        cfg.lora.keys, cfg.lora.rank, cfg.lora.dropout = ["q_proj", "v_proj"], 16, 0.0
        cfg.train.lean_backward = "off" if r["lean_backward"] == "lora" else r["lean_backward"]
        measured = r["tunedeck_sft"]["peak_memory_gb"]
        got = forecast(cfg, mc, 140.0, seq_len=512, backend="cuda").phases["train"]
        assert abs(got - measured) / measured <= 0.15, (r["lean_backward"], got, measured)
    # loading, a layer at a time: the Mac preset's whole run on the H200 (bench/whole_run.py, its last line)
    run = (Path(__file__).resolve().parents[1] / "bench" / "results" / "h200_whole_run_mac_preset_head.txt")
    load_gb = json.loads(run.read_text().splitlines()[-1])["load"]
    fc = forecast(C.Config(), mc, 140.0, backend="cuda")
    assert abs(fc.phases["load"] - load_gb) / load_gb <= 0.15, (fc.phases["load"], load_gb)


def test_quantizing_on_load_holds_one_layer_of_full_precision_weights(demo_model: Path) -> None:
    """Loading with model.quantize evaluates one decoder layer at a time: above the loaded (quantized) model the
    load's peak holds at most the largest of one layer's and the output head's float32 weights, read from the
    checkpoint's own header (the whole-model evaluation held them all: 4x this bound on the tiny model)."""
    import mlx.core as mx

    from tunedeck.core.model import load_base, safetensors_header

    header = {k: v for f in demo_model.glob("*.safetensors") for k, v in safetensors_header(f).items()}
    numel = {k: math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    per_layer: dict[str, int] = {}
    for k, n in numel.items():
        if ".layers." in k:
            layer = k.split(".layers.")[1].split(".")[0]
            per_layer[layer] = per_layer.get(layer, 0) + n
    bound = 4 * max(max(per_layer.values()), numel.get("lm_head.weight", 0))
    cfg = C.Config()
    cfg.model.path, cfg.model.quantize = str(demo_model), 4
    mx.synchronize()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    model, _, _ = load_base(cfg.model, "float32")
    peak, after = mx.get_peak_memory(), mx.get_active_memory()
    assert peak - after <= bound, (peak - before, after - before, bound)
    del model
