"""The peak-memory forecast of a config, before anything is loaded.

`forecast(cfg)` predicts the peak of a training run from the model's config.json alone (no weights
loaded), phase by phase (loading, the KTO reference pass, the training step) and part by part, against
the memory this machine lets training use (core.memory.machine_budget_gb). The model of memory follows
what tunedeck's trainer does (core/step.py, core/objectives.py, core/losses.py) and was calibrated
against core.memory_probe.measure_peak, which runs the trainer's own step on a random model: see the
comments above `_WORK_NOGC` for the measured terms, and tests/test_memory_forecast.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import fast_exp, lean_backward
from .dequantize import chosen as dequantizes
from .layerwise import HEAD_ELEMENTS
from .memory import GB, machine_budget_gb, model_config_for

FITS_FRACTION = 0.85  # "fits" up to this fraction of the budget, "tight" up to all of it
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GROUP_SIZE = 64  # core.model.load_base quantizes with group size 64

# Activations, in elements per token of the micro-batch (B x T), stored in the training dtype. Measured
# with `measure_peak` on factorial grids of tiny Mistral-shaped models (hidden 256/512, intermediate
# 768/1536, head_dim 32/64, 4-12 layers, T 64-512, float32 on a CPU), least-squares fits within 3%:
#
# Kept for the backward by every layer from the lowest LoRA layer up, without checkpointing (MLX
# keeps the arrays the VJPs read): the block input and the residual after attention (2h), q·scale,
# k, v and the attention output (2q + 2kv), the MLP's gate, up and the two SwiGLU intermediates (4I; 2I
# with train.lean_backward, core.lean_backward, and on CPUs, core.fast_exp),
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
# The KTO reference pass (before training, no gradient, micro-batch 2B): a forward working set of these
# elements per token (see _reference_peak for the logits and for how many layers' sets are held).
_REF_WORK = (4.3, 2.9, 1.2, 0.6)
OVERHEAD_GB = 0.002  # MLX's own small arrays (random state, step counter, causal masks)
# Activations x this, per backend: 1.0 = the CPU-measured model above. Set from `measure_peak` runs on
# that backend (CUDA is checked against the H200 below and needs none; Metal is modelled, not measured).
ACTIVATION_SCALE: dict[str, float] = {"cpu": 1.0, "metal": 1.0, "cuda": 1.0}
# CUDA needs no terms of its own: with MLX's CUDA graph limits lowered (core.backend.CUDA_GRAPH_LIMITS) this model
# is within 1% of the whole 7B steps measured on an H200 and within 3% of their reference passes, +3 to +11% over
# the checkpointed ones (bench/results/h200_forecast_7b.txt). At MLX's own limits the whole step held up to 0.48x
# the weights more, and the whole-model reference pass every layer's working set.
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


@dataclass(frozen=True)
class _Shape:
    """The micro-batch a forecast assumes: B sequences of T model inputs, K trained positions each, w bytes
    an element (the training dtype), on backend `kind`."""

    B: int
    T: int
    K: int
    w: int
    kind: str

    @property
    def N(self) -> int:
        return self.B * self.T


def _forecast(cfg, g: _Geometry, budget_gb: float, L: int, completion_len: int | None, kind: str, dtype: str,
              notes: list[str]) -> Forecast:
    T = _padded(L)
    s = _Shape(cfg.train.batch_size, T, min(T, 8 * -(-int(completion_len or T) // 8)), DTYPE_BYTES.get(dtype, 2), kind)
    kto = cfg.train.method == "kto"
    weights, bits = _base_weights(cfg, g, s.w, notes)
    adapters, keys, n_lora = _adapters(cfg, g, notes)
    optimizer = 2 * adapters  # AdamW m and v, zeros_like the float32 parameters
    gradients = adapters * (2 if cfg.train.grad_accumulation > 1 else 1)
    activations, logits, kl = _activations(cfg, g, s, keys, n_lora, bits)
    dynamic = activations + logits + kl + gradients + optimizer
    deq = _dequantized_layer(cfg, g, s, bits, notes)
    overhead = OVERHEAD_GB * GB + OVERHEAD_FRACTION * dynamic + deq
    train_total = weights + adapters + optimizer + gradients + activations + logits + kl + overhead

    phases = {"load": _load_peak(g, s.w, weights, bits) / GB, "train": train_total / GB}
    if kto:
        phases["reference"] = _reference_peak(cfg, g, s, weights + deq, adapters) / GB
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
        notes.append(f"the peak is loading: one layer of the {g.ckpt_dtype} checkpoint at a time beside the "
                     f"weights while {what} it")
    if completion_len is None:
        notes.append("logits assumed at every position (an upper bound): pass completion_len for the data's")
    verdict = "fits" if total <= FITS_FRACTION * budget_gb else "tight" if total <= budget_gb else "won't fit"
    return Forecast(round(total, 4), {k: round(v, 4) for k, v in parts.items()}, round(budget_gb, 2), verdict, [],
                    {k: round(v, 4) for k, v in phases.items()}, notes, T + 1, s.K, kind)


def _base_weights(cfg, g: _Geometry, w: int, notes: list[str]) -> tuple[float, int]:
    """The base model's weights in memory, and the bits they are quantized to (0: not quantized)."""
    if g.quant:
        bits, group = g.quant["bits"], g.quant["group_size"]
        if cfg.model.quantize and cfg.model.quantize != bits:
            notes.append(f"the checkpoint is already {bits}-bit; model.quantize = {cfg.model.quantize} is not applied")
        return _weight_bytes(g, w, bits, group, embed_bits=bits), bits
    bits = int(cfg.model.quantize or 0)
    return _weight_bytes(g, w, bits), bits


def _adapters(cfg, g: _Geometry, notes: list[str]) -> tuple[float, set[str], int]:
    """The adapters' bytes (mlx-lm creates lora_a / lora_b in float32 whatever the model's dtype), the
    projections they adapt, and the number of adapted layers."""
    lora = cfg.lora
    keys, unknown = _lora_keys(g, lora.keys)
    if unknown:
        notes.append(f"lora.keys {', '.join(unknown)}: not a projection of this model; left out")
    n_lora = g.layers if lora.num_layers < 0 else min(lora.num_layers, g.layers)
    mods = g.modules()
    per_layer = sum(lora.rank * (mods[k][0] + mods[k][1]) + (mods[k][1] if lora.type == "dora" else 0) for k in keys)
    return 4.0 * per_layer * n_lora, keys, n_lora


def _layer_elements(cfg, g: _Geometry, s: _Shape, keys: set[str]) -> tuple[float, float, float]:
    """Elements per token (see the comments above _WORK_NOGC): what each adapted layer keeps for the backward,
    one layer's working set during its backward, and what the layers hold beside the logits phase."""
    t, kto = cfg.train, cfg.train.method == "kto"
    h, q, kv, inter = g.h, g.q, g.kv, g.inter
    fused = s.kind == "cuda" and s.T % 128 == 0
    nhT = 0 if fused else g.heads * s.T
    qkv3 = q + 2 * kv
    lq = bool(keys & {"q_proj", "k_proj", "v_proj"})
    lo = "o_proj" in keys
    lgu = bool(keys & {"gate_proj", "up_proj"})
    ld = "down_proj" in keys
    drop = (not kto) and cfg.lora.dropout > 0
    n_qkv = len(keys & {"q_proj", "k_proj", "v_proj"})
    n_gu = len(keys & {"gate_proj", "up_proj"})
    lean = lean_backward.wanted(t.lean_backward, s.kind, t.grad_checkpoint)
    mlp = 2 if lean or fast_exp.wanted(s.kind) else 4  # both SwiGLU backwards keep gate and up only  # both SwiGLU backwards keep gate and up only
    if s.w == 2 and not lean:  # float32 adapters on 2-byte activations: a float32 copy of the input
        lora_in = 2 * (n_qkv * h + lo * q + n_gu * h + ld * inter)  # per adapted projection (core.lean_backward)
    else:
        lora_in = lq * h + lgu * h + ld * inter
    S = 2 * h + 2 * q + 2 * kv + mlp * inter + nhT + lora_in
    if drop:
        S += (2 * n_qkv * h - lq * h) + lo * q + (2 * n_gu * h - lgu * h) + ld * inter
    if t.grad_checkpoint:
        a, b, c, d = _WORK_GC
        return h, S + a * h + b * qkv3 + c * inter + d * nhT, S + _LOGITS_PHASE_GC_H * h  # layerwise: the input only
    a, b, c, d = _WORK_NOGC
    return S, a * h + b * qkv3 + c * inter + d * nhT, S


def _activations(cfg, g: _Geometry, s: _Shape, keys: set[str], n_lora: int, bits: int) -> tuple[float, float, float]:
    """The training step's activations, logits and KL-pass logits at its peak: the logits phase or one
    layer's backward, whichever is larger."""
    t, kto = cfg.train, cfg.train.method == "kto"
    stored, work, beside_logits = _layer_elements(cfg, g, s, keys)
    scale = ACTIVATION_SCALE.get(s.kind, 1.0)
    w_act = s.w * scale
    stored_bytes = n_lora * stored * s.N * w_act
    if cfg.lora.type == "dora":  # DoRA keeps weight-sized arrays per layer (the adapted weight, dequantized)
        mods = g.modules()
        dora_w = sum(mods[k][0] * mods[k][1] for k in keys) * s.w
        stored_bytes += n_lora * dora_w * scale * (1.1 if not (t.grad_checkpoint or bits) else 1.6)  # measured 1.1-2.1
    BKV = s.B * s.K * g.vocab
    one_copy = 4.0 * BKV + (2.0 * BKV if s.w == 2 else 0.0)  # float32 logits (+ the bf16 ones they are cast from)
    n_copies = 3 if not kto else 2
    kl_copies = 1 if kto and cfg.kto.loss_type == "kto" and not t.grad_checkpoint else 0
    logits_phase = (n_copies + kl_copies) * one_copy + beside_logits * s.N * w_act
    layer_phase = work * s.N * w_act
    if logits_phase >= layer_phase:
        return stored_bytes + beside_logits * s.N * w_act, n_copies * one_copy, kl_copies * one_copy
    return stored_bytes + layer_phase, 0.0, 0.0


def _dequantized_layer(cfg, g: _Geometry, s: _Shape, bits: int, notes: list[str]) -> float:
    """One layer's weights dequantized to the training dtype, the transient of each layer-by-layer evaluation
    of a quantized base where model.quantized_matmul dequantizes (core.dequantize; measured +0.44 GB at 7B)."""
    if not (bits and cfg.train.grad_checkpoint and dequantizes(cfg.model.quantized_matmul, s.kind)):
        return 0.0
    notes.append("each layer's weights are dequantized for its evaluation (model.quantized_matmul)")
    return sum(i * o for i, o in g.modules().values()) * s.w


def _reference_peak(cfg, g: _Geometry, s: _Shape, weights: float, adapters: float) -> float:
    """The KTO reference pass (core.reference.compute_set): micro-batches of 2B with their KL pairs, no gradient,
    before the optimizer state exists. Layer by layer (train.grad_checkpoint): one layer's forward working set
    for the examples and their KL completions together, and the logits a few rows at a time
    (core.layerwise.head_logps). Whole model: the batch's logits and one layer's working set."""
    B2 = 2 * s.B
    a, b, c, d = _REF_WORK
    ref_nhT = g.heads * s.T if s.kind == "cpu" else 0  # inference attention is fused on GPUs
    per_token = (a * g.h + b * (g.q + 2 * g.kv) + c * g.inter + d * ref_nhT) * s.w
    logits_row = s.K * g.vocab * (4.0 + (2.0 if s.w == 2 else 0.0))  # float32 (+ the bf16 they are cast from)
    if cfg.train.grad_checkpoint:
        ref = min(B2, max(1, HEAD_ELEMENTS // (s.K * g.vocab))) * logits_row + per_token * B2 * (s.T + s.K)
    else:
        ref = B2 * logits_row + per_token * B2 * s.T
    return weights + adapters + ref + OVERHEAD_GB * GB + OVERHEAD_FRACTION * ref


def _load_peak(g: _Geometry, w: int, weights: float, bits: int) -> float:
    """Loading (core.model.load_base: lazy, one decoder layer evaluated at a time): the weights as trained,
    plus, while a layer is cast or quantized, its checkpoint copy (the output head's, if that is larger)."""
    ckpt_w = DTYPE_BYTES.get(g.ckpt_dtype, 2)
    if ckpt_w == w and not bits:
        return weights + OVERHEAD_GB * GB
    stored_bits = g.quant["bits"] if g.quant else 0
    group = g.quant["group_size"] if g.quant else GROUP_SIZE
    layer = sum(_linear_bytes(i, o, ckpt_w, stored_bits, group) for i, o in g.modules().values())
    head = 0 if g.tied else _linear_bytes(g.h, g.vocab, ckpt_w, stored_bits, group)
    return weights + max(layer, head) + OVERHEAD_GB * GB


#: a suggestion: its text, and the edit of a config and a [seq_len, geometry] state that it makes
_Change = tuple[str, Callable[[Any, list[Any]], Any]]


def _changes(cfg, g: _Geometry, L: int) -> list[_Change]:
    """The changes a suggestion is made of, mildest first within each key: grad checkpointing, a smaller
    batch, shorter sequences, 4-bit weights, a pre-quantized checkpoint, fewer LoRA layers."""
    steps: list[_Change] = []
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
            st[1] = replace(g, quant={"bits": bits, "group_size": GROUP_SIZE})
        steps.append((f"model.path = a pre-quantized {bits}-bit checkpoint (no full-precision load)", prequantized))
    n = g.layers if cfg.lora.num_layers < 0 else cfg.lora.num_layers
    for k in sorted({n // 2, n // 4, 1}, reverse=True):
        if 0 < k < n:
            steps.append((f"lora.num_layers = {k}", lambda c, st, k=k: setattr(c.lora, "num_layers", k)))
    return steps


def _suggest(cfg, g: _Geometry, fc: Forecast, budget_gb: float, L: int, completion_len: int | None, kind: str,
             dtype: str) -> list[str]:
    """One or two changes that bring the forecast under the budget ("fits" first), each with its forecast.

    Single-key changes first (`_changes`); when none is enough alone, one combination of them, applied in
    that order until it fits.
    """

    def run(c, seq: int, geom: _Geometry) -> Forecast:
        return _forecast(c, geom, budget_gb, seq, completion_len, kind, dtype, [])

    steps = _changes(cfg, g, L)
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
