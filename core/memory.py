"""Memory: live readings for step events and gauges, and a peak-memory forecast for a config.

`forecast(cfg)` predicts the peak of a training run from the model's config.json alone (no weights
loaded), part by part, against the memory this machine lets training use (`machine_budget_gb`).
The model of memory follows what tunedeck's trainer does (core/trainer.py, core/losses.py) and was
calibrated against `measure_peak`, which runs the trainer's own step on a random model: see the
comments above `_WORK_NOGC` for the measured terms, and tests/test_memory_forecast.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

GB = 1e9


def readings() -> dict[str, float]:
    """Process RSS, MLX active/peak memory and system memory, in GB."""
    import mlx.core as mx
    import psutil

    vm = psutil.virtual_memory()
    return {
        "rss_gb": round(psutil.Process(os.getpid()).memory_info().rss / GB, 3),
        "mlx_active_gb": round(mx.get_active_memory() / GB, 3),
        "peak_memory_gb": round(mx.get_peak_memory() / GB, 3),
        "sys_used_gb": round((vm.total - vm.available) / GB, 3),
        "sys_available_gb": round(vm.available / GB, 3),
        "sys_total_gb": round(vm.total / GB, 3),
    }


# --- model configs ------------------------------------------------------------------------------

# mistralai/Mistral-7B-Instruct-v0.3 config.json (public), the default model.
MISTRAL_7B_V03: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 32768,
}

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "mistralai/mistral-7b-instruct-v0.3": MISTRAL_7B_V03,
    "mistralai/mistral-7b-v0.3": MISTRAL_7B_V03,
    "mlx-community/mistral-7b-instruct-v0.3-4bit": {**MISTRAL_7B_V03, "quantization": {"group_size": 64, "bits": 4}},
    "mlx-community/mistral-7b-instruct-v0.3-8bit": {**MISTRAL_7B_V03, "quantization": {"group_size": 64, "bits": 8}},
}


def model_config_for(model_path: str) -> dict[str, Any] | None:
    """The config.json of a model without loading it: "demo", a local directory, or a known / cached HF id.

    "demo" gives `core.demo.model_config("tiny")` (read from the built demo model when it exists, for
    its exact vocabulary; never built here). A local directory gives its config.json, plus
    `_checkpoint_bytes` (its *.safetensors sizes). A Hugging Face id gives the config of KNOWN_CONFIGS
    or, if the model was downloaded, the cached config.json. Anything else: None.
    """
    from .config import DEMO_MODEL

    if model_path == DEMO_MODEL:
        from . import demo

        built = demo.default_dir() / "config.json"
        if built.is_file():
            with_bytes = _read_dir_config(built.parent)
            if with_bytes:
                with_bytes.setdefault("torch_dtype", "float32")
                return with_bytes
        return {**demo.model_config("tiny"), "torch_dtype": "float32"}
    p = Path(model_path).expanduser()
    if p.is_dir():
        return _read_dir_config(p)
    known = KNOWN_CONFIGS.get(model_path.lower())
    if known is not None:
        return json.loads(json.dumps(known))
    if model_path.count("/") == 1 and not model_path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_path, "config.json")
        except Exception:  # no hub library, a malformed id: not known
            cached = None
        if isinstance(cached, str) and Path(cached).is_file():
            return _read_dir_config(Path(cached).parent)
    return None


def _read_dir_config(d: Path) -> dict[str, Any] | None:
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    size = sum(f.stat().st_size for f in d.glob("*.safetensors") if f.is_file())
    if size:
        cfg["_checkpoint_bytes"] = size
    return cfg


# --- the machine ----------------------------------------------------------------------------------

LINUX_RESERVE_GB = 2.0  # left to the OS and the app on a Linux CPU machine


def machine_budget_gb() -> float:
    """Memory (GB) this machine lets MLX training use.

    Apple silicon: Metal's `max_recommended_working_set_size` (from `mx.device_info()`, or
    `mx.metal.device_info()` on older MLX). macOS sets it to roughly 2/3 of RAM on small Macs and
    ~3/4 on larger ones: about 16-17 GB of a 24 GB Mac. MLX may allocate past it (it is not a hard
    limit), but then the GPU's memory is paged and training slows by orders of magnitude, so it is
    the honest budget. CUDA: the device's memory. A Linux CPU: total RAM minus LINUX_RESERVE_GB
    (or 10%, whichever is larger).
    """
    import mlx.core as mx
    import psutil

    info: dict[str, Any] = {}
    for fn in (getattr(mx, "device_info", None), getattr(getattr(mx, "metal", None), "device_info", None)):
        if fn is None:
            continue
        try:
            info = dict(fn())
        except Exception:
            continue
        if info:
            break
    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    cuda = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    if metal and info.get("max_recommended_working_set_size"):
        return float(info["max_recommended_working_set_size"]) / GB
    if cuda:
        for key in ("total_memory", "memory_size", "max_recommended_working_set_size"):
            if info.get(key):
                return float(info[key]) / GB
    total = psutil.virtual_memory().total / GB
    if metal and info.get("memory_size"):
        total = float(info["memory_size"]) / GB
        return total * 0.67
    return max(total - max(LINUX_RESERVE_GB, 0.1 * total), 0.5 * total)


# --- the forecast ---------------------------------------------------------------------------------

FITS_FRACTION = 0.85  # "fits" up to this fraction of the budget, "tight" up to all of it
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GROUP_SIZE = 64  # core.model.load_base quantizes with group size 64

# Activations, in elements per token of the micro-batch (B x T), stored in the training dtype. Measured
# with `measure_peak` on factorial grids of tiny Mistral-shaped models (hidden 256/512, intermediate
# 768/1536, head_dim 32/64, 4-12 layers, T 64-512, float32 on a CPU), least-squares fits within 3%:
#
# Kept for the backward by every layer from the lowest LoRA layer up, without checkpointing (MLX
# keeps the arrays the VJPs read): the block input and the residual after attention (2h), q·scale,
# k, v and the attention output (2q + 2kv), the MLP's gate, up and the two SwiGLU intermediates (4I),
# the attention probabilities (heads x T, where attention is not fused: CPU; Metal always trains
# through the unfused graph; CUDA when T is not a multiple of 128), plus the input of each LoRA'd
# projection (normed h for q/k/v, h for gate/up, I for down) and, with dropout (SFT), a dropped copy
# and its mask for each LoRA'd projection: 2 x its input instead of the shared one.
# With `train.grad_checkpoint` (core.layerwise) a layer keeps only its input h between the forward
# and its turn in the backward, which recomputes its full activations.
# On top of what the layers keep, the peak holds either one layer's working set during its backward
# (_WORK_*) or the logits phase: the float32 logits over the completion positions (B x K x V) and
# their gradient buffers (SFT 3 copies: the logits, the softmax and the scattered target gradient; KTO
# 2, plus, without checkpointing, 1 of the KL pass's logits alive at the same time) and one layer.
_WORK_NOGC = (9.0, 4.0, 3.4, 1.7)  # per token: x h, x (q + 2kv), x I, x heads*T (unfused attention)
_WORK_GC = (4.0, 3.6, 4.5, 1.9)  # on top of one layer's full activations (recomputed)
_LOGITS_PHASE_GC_H = 6.0  # x h per token, with checkpointing, beside the logits phase
# The KTO reference pass (before training, no gradient, micro-batch 2B, one layer per evaluation):
# one float32 copy of the logits plus a forward working set of these elements per token.
_REF_WORK = (4.3, 2.9, 1.2, 0.6)
# Loading (core.model.load_base): mlx_lm.load materialises the whole checkpoint, then the cast to
# the training dtype and/or the quantization run beside it; measured peaks were checkpoint + 0.58x
# the cast copy and checkpoint + 0.62x the quantized weights.
_LOAD_CAST = 0.6
# core.model.load_base loads lazily before quantizing: measured at 7B 4-bit on an H100, the load peaked
# at the quantized weights + 0.14x the bf16 checkpoint (6.25 GB; bench/results/h100_memory_probe.txt).
_LOAD_LAZY_QUANT = 0.14
OVERHEAD_GB = 0.002  # MLX's own small arrays (random state, step counter, causal masks)
# Activations x this, per backend: 1.0 = the CPU-measured model above. Set from `measure_peak` runs on
# that backend (Metal and CUDA are modelled, not yet measured, at the time of writing).
ACTIVATION_SCALE: dict[str, float] = {"cpu": 1.0, "metal": 1.0, "cuda": 1.0}
# MLX 0.32.4's CUDA backend holds far more than the CPU-measured model during a step (more with quantized
# weights). Bytes per batch token, fitted to 7B peaks measured on an H100: "float" to the bf16 steps of
# bench/results/h100_forecast_7b.txt (it over-forecasts 4 x 2048 without checkpointing: 89 GB against
# 65 measured); "quantized" to the 4-bit 2 x 1024 layer-by-layer checkpointed steps of
# bench/results/h100_q4_b2_s1024_gc.txt (SFT 15.9 GB, KTO 13.8 GB).
CUDA_EXTRA_PER_TOKEN: dict[str, float] = {"float": 3.6e6, "quantized": 4.5e6}
OVERHEAD_FRACTION = 0.02  # of the dynamic parts: allocator rounding, what the fits miss


@dataclass
class Forecast:
    """A predicted peak: `parts` (GB) add up to `total_gb`; compare with `budget_gb`."""

    total_gb: float
    parts: dict[str, float]  # weights, adapters, optimizer, gradients, activations, logits, kl_forward, overhead (+ load, reference)
    budget_gb: float
    verdict: str  # "fits" | "tight" | "won't fit" ("unknown" when the model's config.json is unknown)
    suggestions: list[str]  # e.g. "train.batch_size = 2 → 14.1 GB", each fitting the budget
    phases: dict[str, float] = field(default_factory=dict)  # peak GB of each phase: load, reference (KTO), train
    notes: list[str] = field(default_factory=list)  # assumptions, one line each
    seq_len: int = 0  # the padded sequence length assumed (T + 1)
    completion_len: int = 0  # trained (completion) tokens per sequence assumed
    backend: str = ""  # cpu | metal | cuda


@dataclass(frozen=True)
class _Geometry:
    h: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    tied: bool
    bias: bool
    quant: dict[str, int] | None  # pre-quantized checkpoint: {"bits", "group_size"}
    ckpt_bytes: float | None
    ckpt_dtype: str

    @classmethod
    def of(cls, mc: dict[str, Any]) -> _Geometry:
        text = mc.get("text_config") if isinstance(mc.get("text_config"), dict) else {}
        g = {**mc, **text}
        h = int(g["hidden_size"])
        heads = int(g["num_attention_heads"])
        q = g.get("quantization") or g.get("quantization_config")
        quant = None
        if isinstance(q, dict) and q.get("bits"):
            quant = {"bits": int(q["bits"]), "group_size": int(q.get("group_size", GROUP_SIZE))}
        return cls(
            h=h, layers=int(g["num_hidden_layers"]), heads=heads,
            kv_heads=int(g.get("num_key_value_heads") or heads),
            head_dim=int(g.get("head_dim") or h // heads), inter=int(g["intermediate_size"]),
            vocab=int(g["vocab_size"]), tied=bool(g.get("tie_word_embeddings", False)),
            bias=bool(g.get("attention_bias", False)), quant=quant,
            ckpt_bytes=float(g["_checkpoint_bytes"]) if g.get("_checkpoint_bytes") else None,
            ckpt_dtype=str(g.get("torch_dtype") or g.get("dtype") or "bfloat16"),
        )

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def modules(self) -> dict[str, tuple[int, int]]:
        """(input, output) width of each linear layer of a block, by short name."""
        h, q, kv, i = self.h, self.q, self.kv, self.inter
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def _linear_bytes(n_in: int, n_out: int, w: int, bits: int, group: int) -> float:
    if bits and n_in % group == 0:
        return n_out * n_in * bits / 8 + 2 * n_out * (n_in // group) * w
    return n_out * n_in * w


def _weight_bytes(g: _Geometry, w: int, bits: int, group: int = GROUP_SIZE, embed_bits: int = 0) -> float:
    """Base weights in memory: linear layers quantized (`bits`), the embedding only if `embed_bits`."""
    block = sum(_linear_bytes(i, o, w, bits, group) for i, o in g.modules().values())
    block += 2 * g.h * w + ((g.q + 2 * g.kv) * w if g.bias else 0)
    embed = _linear_bytes(g.h, g.vocab, w, embed_bits, group)
    head = 0 if g.tied else _linear_bytes(g.h, g.vocab, w, bits, group)
    return g.layers * block + embed + head + g.h * w


def _lora_keys(g: _Geometry, keys: list[str]) -> tuple[set[str], list[str]]:
    known = g.modules()
    found: set[str] = set()
    unknown: list[str] = []
    for key in keys:
        short = key.rsplit(".", 1)[-1]
        if short in known:
            found.add(short)
        else:
            unknown.append(key)
    return found, unknown


def _padded(seq_len: int) -> int:
    """Model input length T for sequences of `seq_len` tokens (core.batching.pack pads T to 16)."""
    return 16 * -(-(max(seq_len, 2) - 1) // 16)


def forecast(cfg, model_config: dict | None = None, budget_gb: float | None = None, seq_len: int | None = None,
             completion_len: int | None = None, backend: str | None = None) -> Forecast:
    """Predict the peak memory of training `cfg`, before loading anything.

    model_config: the model's config.json (default: `model_config_for(cfg.model.path)`).
    budget_gb: memory training may use (default: `machine_budget_gb()`).
    seq_len: the longest sequence of a micro-batch, in tokens (default `data.max_seq_len`; the trainer
      pads each batch to its longest example, so the dataset's p99 length is the realistic value).
    completion_len: trained tokens of the longest completion in a micro-batch (default: the whole
      sequence, an upper bound; the loss computes logits only at completion positions).
    backend: "cpu" | "metal" | "cuda" (default: this machine's, from core.backend.detect()).
    """
    from . import backend as be

    kind = backend or be.detect().kind
    dtype = be.dtype_for(be.Backend(kind, "float32" if kind == "cpu" else "bfloat16", None, False, ""), cfg.model.dtype)
    if budget_gb is None:
        budget_gb = machine_budget_gb()
    L = int(seq_len or cfg.data.max_seq_len)
    notes: list[str] = []
    mc = model_config if model_config is not None else model_config_for(cfg.model.path)
    if not mc:
        notes.append(f"no config.json known for {cfg.model.path!r}: download the model (or give a local "
                     "directory) for a forecast")
        return Forecast(0.0, {}, round(budget_gb, 2), "unknown", [], {}, notes, L, 0, kind)
    try:
        g = _Geometry.of(mc)
    except (KeyError, TypeError, ValueError) as e:
        notes.append(f"config.json of {cfg.model.path!r} lacks {e}: no forecast")
        return Forecast(0.0, {}, round(budget_gb, 2), "unknown", [], {}, notes, L, 0, kind)
    fc = _forecast(cfg, g, budget_gb, L, completion_len, kind, dtype, notes)
    if mc.get("model_type") not in (None, "llama", "mistral", "qwen2", "qwen3"):
        fc.notes.append(f"model_type {mc.get('model_type')!r}: assumed a llama-like block (attention + SwiGLU MLP)")
    if fc.verdict != "fits":
        fc.suggestions = _suggest(cfg, g, fc, budget_gb, L, completion_len, kind, dtype)
    return fc


def _forecast(cfg, g: _Geometry, budget_gb: float, L: int, completion_len: int | None, kind: str, dtype: str,
              notes: list[str]) -> Forecast:
    w = DTYPE_BYTES.get(dtype, 2)
    t, lora = cfg.train, cfg.lora
    kto = t.method == "kto"
    B = t.batch_size
    T = _padded(L)
    K = min(T, 8 * -(-int(completion_len or T) // 8))
    N = B * T

    # weights
    if g.quant:
        bits, group = g.quant["bits"], g.quant["group_size"]
        weights = _weight_bytes(g, w, bits, group, embed_bits=bits)
        if cfg.model.quantize and cfg.model.quantize != bits:
            notes.append(f"the checkpoint is already {bits}-bit; model.quantize = {cfg.model.quantize} is not applied")
    else:
        bits = int(cfg.model.quantize or 0)
        weights = _weight_bytes(g, w, bits)

    # adapters: mlx-lm creates lora_a / lora_b in float32 whatever the model's dtype
    keys, unknown = _lora_keys(g, lora.keys)
    if unknown:
        notes.append(f"lora.keys {', '.join(unknown)}: not a projection of this model; left out")
    n_lora = g.layers if lora.num_layers < 0 else min(lora.num_layers, g.layers)
    mods = g.modules()
    per_layer = sum(lora.rank * (mods[k][0] + mods[k][1]) + (mods[k][1] if lora.type == "dora" else 0) for k in keys)
    adapters = 4.0 * per_layer * n_lora
    optimizer = 2 * adapters  # AdamW m and v, zeros_like the float32 parameters
    gradients = adapters * (2 if t.grad_accumulation > 1 else 1)

    # activations (elements per token; see the comments above _WORK_NOGC)
    h, q, kv, inter = g.h, g.q, g.kv, g.inter
    fused = kind == "cuda" and T % 128 == 0
    nhT = 0 if fused else g.heads * T
    qkv3 = q + 2 * kv
    lq = bool(keys & {"q_proj", "k_proj", "v_proj"})
    lo = "o_proj" in keys
    lgu = bool(keys & {"gate_proj", "up_proj"})
    ld = "down_proj" in keys
    drop = (not kto) and lora.dropout > 0
    n_qkv = len(keys & {"q_proj", "k_proj", "v_proj"})
    n_gu = len(keys & {"gate_proj", "up_proj"})
    S = 2 * h + 2 * q + 2 * kv + 4 * inter + nhT + lq * h + lgu * h + ld * inter
    if drop:
        S += (2 * n_qkv * h - lq * h) + lo * q + (2 * n_gu * h - lgu * h) + ld * inter
    if t.grad_checkpoint:
        stored = h  # core.layerwise keeps each layer's input only
        a, b, c, d = _WORK_GC
        work = S + a * h + b * qkv3 + c * inter + d * nhT
        beside_logits = S + _LOGITS_PHASE_GC_H * h
    else:
        stored = S
        a, b, c, d = _WORK_NOGC
        work = a * h + b * qkv3 + c * inter + d * nhT
        beside_logits = S
    scale = ACTIVATION_SCALE.get(kind, 1.0)
    w_act = w * scale
    stored_bytes = n_lora * stored * N * w_act
    if lora.type == "dora":  # DoRA keeps weight-sized arrays per layer (the adapted weight, dequantized)
        dora_w = sum(mods[k][0] * mods[k][1] for k in keys) * w
        stored_bytes += n_lora * dora_w * scale * (1.1 if not (t.grad_checkpoint or bits) else 1.6)  # measured 1.1-2.1
    BKV = B * K * g.vocab
    copy = 4.0 * BKV + (2.0 * BKV if w == 2 else 0.0)  # float32 logits (+ the bf16 ones they are cast from)
    n_copies = 3 if not kto else 2
    kl_copies = 1 if kto and cfg.kto.loss_type == "kto" and not t.grad_checkpoint else 0
    logits_phase = (n_copies + kl_copies) * copy + beside_logits * N * w_act
    layer_phase = work * N * w_act
    if logits_phase >= layer_phase:
        activations = stored_bytes + beside_logits * N * w_act
        logits, kl = n_copies * copy, kl_copies * copy
    else:
        activations = stored_bytes + layer_phase
        logits = kl = 0.0
    dynamic = activations + logits + kl + gradients + optimizer
    overhead = OVERHEAD_GB * GB + OVERHEAD_FRACTION * dynamic
    if kind == "cuda":  # empirical: what MLX's CUDA backend holds beyond the model above (CUDA_EXTRA)
        overhead += CUDA_EXTRA_PER_TOKEN["quantized" if bits else "float"] * B * T
    train_total = weights + adapters + optimizer + gradients + activations + logits + kl + overhead

    # the KTO reference pass: micro-batches of 2B, no gradient, before the optimizer state exists
    ref_total = 0.0
    if kto:
        B2 = 2 * B
        a, b, c, d = _REF_WORK
        ref_nhT = g.heads * T if kind == "cpu" else 0  # inference attention is fused on GPUs
        ref = B2 * K * g.vocab * (4.0 + (2.0 if w == 2 else 0.0)) + (a * h + b * qkv3 + c * inter + d * ref_nhT) * B2 * T * w
        ref_total = weights + adapters + ref + OVERHEAD_GB * GB + OVERHEAD_FRACTION * ref

    # loading: the checkpoint as stored, then cast / quantized beside it
    ckpt_w = DTYPE_BYTES.get(g.ckpt_dtype, 2)
    if g.quant:
        ckpt = g.ckpt_bytes or _weight_bytes(g, ckpt_w, g.quant["bits"], g.quant["group_size"], g.quant["bits"])
        load_extra = _LOAD_CAST * weights if ckpt_w != w else 0.0
    else:
        ckpt = g.ckpt_bytes or _weight_bytes(g, ckpt_w, 0)
        cast = _LOAD_CAST * _weight_bytes(g, w, 0) if ckpt_w != w else 0.0
        load_extra = cast
        if bits:  # lazy load: the full-precision checkpoint is never resident at once
            ckpt, load_extra = weights, _LOAD_LAZY_QUANT * ckpt
    load_total = ckpt + load_extra + OVERHEAD_GB * GB

    phases = {"load": load_total / GB, "train": train_total / GB}
    if kto:
        phases["reference"] = ref_total / GB
    parts = {"weights": weights, "adapters": adapters, "optimizer": optimizer, "gradients": gradients,
             "activations": activations, "logits": logits, "kl_forward": kl, "overhead": overhead}
    parts = {k: v / GB for k, v in parts.items()}
    total = max(phases.values())
    if phases.get("reference", 0) > phases["train"] and phases["reference"] >= phases["load"]:
        parts["reference"] = phases["reference"] - phases["train"]
        notes.append("the peak is the KTO reference pass (micro-batches of 2 x train.batch_size, before training)")
    elif phases["load"] > phases["train"]:
        parts["load"] = phases["load"] - phases["train"]
        what = "quantizing" if (bits and not g.quant) else "casting"
        notes.append(f"the peak is loading: the {g.ckpt_dtype} checkpoint is held whole while {what} it")
    if completion_len is None:
        notes.append("logits assumed at every position (an upper bound): pass completion_len for the data's")
    verdict = "fits" if total <= FITS_FRACTION * budget_gb else "tight" if total <= budget_gb else "won't fit"
    return Forecast(round(total, 4), {k: round(v, 4) for k, v in parts.items()}, round(budget_gb, 2), verdict, [],
                    {k: round(v, 4) for k, v in phases.items()}, notes, T + 1, K, kind)


def _suggest(cfg, g: _Geometry, fc: Forecast, budget_gb: float, L: int, completion_len: int | None, kind: str,
             dtype: str) -> list[str]:
    """One or two changes that bring the forecast under the budget ("fits" first), each with its forecast.

    Single-key changes first (grad checkpointing, a smaller batch, shorter sequences, 4-bit weights, a
    pre-quantized checkpoint when loading is the peak, fewer LoRA layers); when none is enough alone,
    one combination of them, applied in that order until it fits.
    """
    import copy

    def run(c, seq: int, geom: _Geometry) -> Forecast:
        return _forecast(c, geom, budget_gb, seq, completion_len, kind, dtype, [])

    steps: list[tuple[str, Any]] = []  # (text, edit(c, state)) applied to a config and a [seq, geometry] state
    t = cfg.train
    if not t.grad_checkpoint:
        steps.append(("train.grad_checkpoint = true", lambda c, st: setattr(c.train, "grad_checkpoint", True)))
    low = 2 if t.method == "kto" else 1
    for b in range(t.batch_size - 1, low - 1, -1):
        ga = t.grad_accumulation * t.batch_size / b
        extra = f" (train.grad_accumulation = {ga:g} keeps the effective batch)" if ga == int(ga) and ga > 1 else ""
        steps.append((f"train.batch_size = {b}{extra}", lambda c, st, b=b: setattr(c.train, "batch_size", b)))
    seq = L
    while seq > 256:
        seq = max(256, (seq // 2) // 64 * 64)

        def shorter(c, st, s=seq):
            c.data.max_seq_len = s
            st[0] = min(st[0], s)
        steps.append((f"data.max_seq_len = {seq}", shorter))
    if not g.quant and cfg.model.quantize != 4:
        steps.append(("model.quantize = 4", lambda c, st: setattr(c.model, "quantize", 4)))
    if not g.quant:
        bits = cfg.model.quantize or 4

        def prequantized(c, st, bits=bits):
            c.model.quantize = bits
            st[1] = replace(g, quant={"bits": bits, "group_size": GROUP_SIZE}, ckpt_bytes=None)
        steps.append((f"model.path = a pre-quantized {bits}-bit checkpoint (no full-precision load)", prequantized))
    n = g.layers if cfg.lora.num_layers < 0 else cfg.lora.num_layers
    for k in sorted({n // 2, n // 4, 1}, reverse=True):
        if 0 < k < n:
            steps.append((f"lora.num_layers = {k}", lambda c, st, k=k: setattr(c.lora, "num_layers", k)))

    singles: list[tuple[str, Forecast]] = []
    tried_keys: set[str] = set()
    for text, edit in steps:
        key = text.split(" =")[0]
        if key in tried_keys:
            continue  # the first (mildest) value of each key that fits
        c, st = copy.deepcopy(cfg), [L, g]
        edit(c, st)
        f = run(c, st[0], st[1])
        if f.total_gb <= budget_gb and f.total_gb < fc.total_gb:
            singles.append((text, f))
            tried_keys.add(key)
    if singles:
        singles.sort(key=lambda tf: tf[1].verdict != "fits")  # stable: the order of `steps` otherwise
        return [f"{text} → {f.total_gb:.1f} GB" for text, f in singles[:2]]
    # cumulative: the one-off changes first (checkpointing, bits, a pre-quantized checkpoint), then the
    # batch, the sequence length and the LoRA layers lowered step by step, until it fits
    ladders = ("train.batch_size", "data.max_seq_len", "lora.num_layers")
    ordered = [st_ for st_ in steps if st_[0].split(" =")[0] not in ladders]
    ordered += [st_ for key in ladders for st_ in steps if st_[0].split(" =")[0] == key]
    c, st, done = copy.deepcopy(cfg), [L, g], []
    for text, edit in ordered:
        key = text.split(" =")[0]
        edit(c, st)
        done = [d for d in done if d.split(" =")[0] != key] + [text.split(" (")[0]]
        if key == "model.path":  # a pre-quantized checkpoint says the bits already
            done = [d for d in done if not d.startswith("model.quantize")]
        f = run(c, st[0], st[1])
        if f.total_gb <= budget_gb:
            return [f"{', '.join(done)} → {f.total_gb:.1f} GB"]
    return []


def _unpatched_block_call(cls: type) -> Any:
    """The original `__call__` of a block class, unwrapping mlx-lm's `grad_checkpoint` patches."""
    fn = cls.__call__
    while getattr(fn, "__name__", "") == "checkpointed_fn" and fn.__closure__:
        cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
        if "fn" not in cells:
            break
        fn = cells["fn"]
    return fn


def measure_peak(cfg, steps: int = 2, seq_len: int | None = None, model_config: dict | None = None,
                 seed: int = 0, completion_len: int | None = None) -> dict[str, float]:
    """Measure MLX's peak memory (GB) of `steps` real training steps of `cfg` on random tokens.

    Builds a random model of `model_config` (default: `model_config_for(cfg.model.path)`) in memory,
    casts and quantizes it as `core.model.load_base` does, applies the adapters with
    `core.model.apply_adapters`, and runs the trainer's own compiled step (`Trainer._make_step`) and
    optimizer on `train.batch_size` sequences of `seq_len` (default `data.max_seq_len`) tokens, the
    last `completion_len` of them trained (default: all but the first, as `forecast` assumes); for
    KTO it first runs the reference pass (`core.reference.compute`, batch 2×B) over the examples and
    their KL partners, as the trainer does before training. Returns the peaks of each phase:
    `weights_gb` (active after the model and adapters are built), `reference_gb`, `step_gb`,
    `peak_gb` (the largest), all net of what the process held before the call. On a GPU it measures
    the same at 7B: `measure_peak(cfg, model_config=model_config_for(cfg.model.path))`.
    """
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.models import llama

    from . import backend
    from .batching import Sequences
    from .model import apply_adapters
    from .reference import compute as reference_compute
    from .trainer import Trainer

    mc = dict(model_config or model_config_for(cfg.model.path) or {})
    if not mc:
        raise ValueError(f"no config.json known for {cfg.model.path!r}; pass model_config")
    dtype = backend.dtype_for(backend.detect(), cfg.model.dtype)
    kto = cfg.train.method == "kto"
    B = cfg.train.batch_size
    L = seq_len or cfg.data.max_seq_len

    block_cls = llama.TransformerBlock
    saved_call = block_cls.__call__
    mx.synchronize()
    base = mx.get_active_memory()  # arrays of the calling process, left out of the numbers
    block_cls.__call__ = _unpatched_block_call(block_cls)
    mx.random.seed(seed)
    try:
        model = llama.Model(llama.ModelArgs.from_dict(mc))
        model.set_dtype(getattr(mx, dtype))
        if cfg.model.quantize:
            nn.quantize(
                model, group_size=64, bits=cfg.model.quantize,
                class_predicate=lambda _p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0,
            )
        mx.eval(model.parameters())
        apply_adapters(model, cfg.lora, "random")
        mx.synchronize()
        mx.clear_cache()
        out = {"weights_gb": (mx.get_active_memory() - base) / GB, "reference_gb": 0.0}

        rng = np.random.default_rng(seed)
        vocab = int(mc["vocab_size"])
        k = min(completion_len or L - 1, L - 1)
        n = 2 * B if kto else B  # the reference pass runs over micro-batches of 2B
        ids = [rng.integers(3, vocab, size=L).astype(np.int32) for _ in range(n)]
        starts = np.full(n, L - k, dtype=np.int64)
        labels = np.arange(n) % 2 == 0
        seqs = Sequences(ids=ids, starts=starts, labels=labels)
        ref = ref_kl = None
        if kto:
            seqs.set_kl_pairs([np.concatenate([ids[i][: L - k], ids[(i + 1) % n][L - k:]]) for i in range(n)],
                              starts.copy())
            mx.reset_peak_memory()
            model.eval()
            ref = reference_compute(model, seqs.ids, seqs.starts, 2 * B)
            ref_kl = reference_compute(model, seqs.kl_ids, seqs.kl_starts, 2 * B)
            mx.synchronize()
            out["reference_gb"] = (mx.get_peak_memory() - base) / GB
            mx.clear_cache()

        trainer = object.__new__(Trainer)
        trainer.cfg, trainer.size, trainer.rank = cfg, 1, 0
        mode = getattr(cfg.train, "compile", "auto")  # as Trainer._train decides
        trainer.compiled = mode == "on" or (mode == "auto" and backend.detect().kind != "cpu")
        trainer._setup_step(model)
        optimizer = trainer._optimizer(max(steps, 1))
        model.train(not kto)
        step = trainer._make_step(model, optimizer)
        state = [model.state, optimizer.state, mx.random.state]
        mx.reset_peak_memory()
        ga = cfg.train.grad_accumulation
        for s in range(steps):
            grad = None
            for j in range(ga):
                mx.random.seed(seed * 1_000_003 + s * ga + j)  # as Trainer._train: per micro-batch
                batch = trainer._batch(seqs, np.arange(B), ref, ref_kl)
                weight = (mx.array(batch.weight),) if hasattr(batch, "weight") else ()  # as Trainer._train calls it
                metrics, grad = step(*batch.arrays, mx.array(1.0), *weight, grad, j == ga - 1)
                mx.eval(state, metrics, grad)
        mx.synchronize()
        out["step_gb"] = (mx.get_peak_memory() - base) / GB
        out["peak_gb"] = max(out["weights_gb"], out["reference_gb"], out["step_gb"])
        return out
    finally:
        block_cls.__call__ = saved_call
