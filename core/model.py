"""Base model loading, quantization (QLoRA) and LoRA/DoRA adapters, through mlx-lm.

Adapters are saved in mlx-lm's layout (`adapters.safetensors` + `adapter_config.json`) so that
`mlx_lm.generate --model BASE --adapter-path DIR` loads them unchanged.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from . import backend, block_attention, dequantize, fast_exp
from .config import DEMO_MODEL, LoraConfig, ModelConfig

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
QUANT_GROUP_SIZE = 64  # weights quantized on load (model.quantize) share a scale and bias per 64 inputs


class ModelError(Exception):
    """A model or adapter that cannot be used, with the reason."""


def resolve_path(path: str) -> str:
    """"demo" → the cached demo model; an existing directory → itself; otherwise a Hugging Face id."""
    if path == DEMO_MODEL:
        from . import demo

        return str(demo.ensure())
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"model path {path} is a file; expected a model directory with config.json")
        if not (p / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json")
        if not any((p / n).exists() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise ModelError(f"model directory {path} has no tokenizer (tokenizer.json or tokenizer.model)")
        return str(p)
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ModelError(f"model path {path} does not exist (and is not a Hugging Face id like org/name)")
    return path


def check_remote_code(model_dir: Path, trust_remote_code: bool) -> None:
    """Refuse a model whose config references custom code unless the user opted in."""
    if trust_remote_code:
        return
    found: list[str] = []
    for name, keys in (("config.json", ("auto_map", "model_file")), ("tokenizer_config.json", ("auto_map",))):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot read it as JSON ({e})") from None
        if isinstance(cfg, dict):
            found += [f"{name}: {key}" for key in keys if key in cfg]
    found += sorted(p.name for p in model_dir.glob("*.py"))[:5]
    if found:
        raise ModelError(
            f"{model_dir} ships custom code ({', '.join(found)}); tunedeck never runs it implicitly. "
            "Set model.trust_remote_code = true only if you trust its author."
        )


_HEADER_MAX = 100 << 20  # a safetensors JSON header larger than this is not a real one
_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file (name -> dtype, shape, data_offsets), read without loading
    the weights; ModelError naming the file if it is truncated or not a safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, _HEADER_MAX):
                raise ModelError(f"{path}: damaged or not a safetensors file ({size} bytes)")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: damaged or not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: damaged or not a safetensors file (its header is not a table)")
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values() if isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + n + end > size:
        raise ModelError(f"{path}: truncated ({size} bytes; its header needs {8 + n + end})")
    return header


def _shape(tensors: dict[str, Any], suffix: str) -> list[int] | None:
    key = next((k for k in tensors if k.endswith(suffix)), None)
    shape = tensors[key].get("shape") if key else None
    return shape if isinstance(shape, list) else None


def _positive_int(cfg: dict[str, Any], key: str, path: Path) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{path}: {key} = {value!r}; expected a positive integer")
    return value


def check_dimensions(model_dir: Path) -> None:
    """Refuse a config.json whose dimensions disagree with the weights' shapes (an absurd
    num_hidden_layers would otherwise build millions of layers), and damaged weight files."""
    path = model_dir / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: expected a JSON object")
    files = sorted(model_dir.glob("model*.safetensors"))
    tensors: dict[str, Any] = {}
    for f in files:
        tensors.update(safetensors_header(f))
    dims = {k: _positive_int(cfg, k, path) for k in ("num_hidden_layers", "hidden_size", "vocab_size",
                                                      "num_attention_heads", "num_key_value_heads", "head_dim")}
    if not tensors:
        return
    layers = {int(m.group(1)) for k in tensors if (m := _LAYER_KEY.search(k))}
    if dims["num_hidden_layers"] and layers and dims["num_hidden_layers"] > max(layers) + 1:
        raise ModelError(f"{path}: num_hidden_layers = {dims['num_hidden_layers']}, but the weights hold "
                         f"{max(layers) + 1} layers")
    q = cfg.get("quantization")
    pack = 32 // q["bits"] if isinstance(q, dict) and isinstance(q.get("bits"), int) and q["bits"] > 0 else 1
    embed = _shape(tensors, "embed_tokens.weight")
    if embed and len(embed) == 2:
        for key, have in (("vocab_size", embed[0]), ("hidden_size", embed[1] * pack)):
            if dims[key] and dims[key] != have:
                raise ModelError(f"{path}: {key} = {dims[key]}, but the embedding weights are "
                                 f"{embed[0]} x {embed[1] * pack}")
    heads, hidden = dims["num_attention_heads"], dims["hidden_size"]
    head_dim = dims["head_dim"] or (hidden // heads if heads and hidden else None)
    for key, suffix in (("num_attention_heads", "layers.0.self_attn.q_proj.weight"),
                        ("num_key_value_heads", "layers.0.self_attn.k_proj.weight")):
        rows = _shape(tensors, suffix)
        if dims[key] and head_dim is not None and rows and dims[key] * head_dim != rows[0]:
            raise ModelError(f"{path}: {key} = {dims[key]} (head size {head_dim}), but {suffix} has "
                             f"{rows[0]} rows")


def check_adapter_files(adapter: Path) -> None:
    """Refuse an adapter directory whose adapter_config.json is not a JSON object or whose
    adapters.safetensors is damaged, naming the file."""
    path = adapter / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("lora_parameters", {}), dict):
        raise ModelError(f"{path}: expected a JSON object with lora_parameters (mlx-lm's adapter config)")
    safetensors_header(adapter / ADAPTER_FILE)


def check_template(tokenizer: Any) -> None:
    """Render a short conversation once, so that a chat template that hangs or explodes is refused
    when the model loads (TemplateError as ModelError), not in the middle of a run."""
    from .template import TemplateLimitError, encode_prompt, has_chat_template

    if not has_chat_template(tokenizer):
        return
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]
    for messages in (probe, probe[1:]):
        try:
            encode_prompt(tokenizer, messages)
        except TemplateLimitError as e:
            raise ModelError(str(e)) from None


def load_base(cfg: ModelConfig, dtype: str) -> tuple[nn.Module, Any, Path]:
    """Load the base model and tokenizer, cast floating weights to `dtype`, quantize if asked (CUDA graph limits
    set first: training, evaluation and the audit's scoring all load through here)."""
    import mlx_lm
    from mlx_lm.utils import _download

    backend.limit_cuda_graphs()
    path = resolve_path(cfg.path)
    try:
        model_dir = Path(_download(path))
    except Exception as e:  # hub errors, offline mode
        raise ModelError(f"cannot find model {cfg.path!r}: {e}") from e
    check_remote_code(model_dir, cfg.trust_remote_code)
    check_dimensions(model_dir)
    try:
        # lazy: with quantization the full-precision weights are never all resident at once
        # (measured at 7B, 4-bit: load peak 6.3 GB instead of 15.7 GB; bench/results/h100_memory_probe.txt)
        model, tokenizer = mlx_lm.load(str(model_dir), tokenizer_config={"trust_remote_code": cfg.trust_remote_code},
                                       lazy=True)
    except (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelError(f"cannot load model from {model_dir}: {e}") from None
    check_template(tokenizer)
    model.set_dtype(getattr(mx, dtype))
    if cfg.quantize and not is_quantized(model):
        quantize_linear(model, cfg.quantize)
    for layer in getattr(model, "layers", []):  # one layer's full-precision weights resident at a time
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    return model, tokenizer, model_dir


def quantize_linear(model: nn.Module, bits: int) -> None:
    """Quantize the model's linear layers in place (QLoRA's base: affine, `bits`, groups of QUANT_GROUP_SIZE);
    a layer whose input width is not a multiple of the group size keeps its precision."""
    nn.quantize(
        model, group_size=QUANT_GROUP_SIZE, bits=bits,
        class_predicate=lambda _p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % QUANT_GROUP_SIZE == 0,
    )


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def full_keys(model: nn.Module, keys: list[str]) -> list[str]:
    """Map short names ("q_proj") to the module paths inside a block ("self_attn.q_proj")."""
    names = [n for n, m in model.layers[0].named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    out: list[str] = []
    for key in keys:
        hits = [n for n in names if n == key or n.endswith("." + key)]
        if not hits:
            raise ModelError(f"lora.keys: no linear layer named {key!r}; this model has {', '.join(sorted(names))}")
        out += [h for h in hits if h not in out]
    return out


def adapter_config(lora: LoraConfig, model: nn.Module, base: str) -> dict[str, Any]:
    """mlx-lm's adapter_config.json for these LoRA settings."""
    n = len(model.layers) if lora.num_layers < 0 else min(lora.num_layers, len(model.layers))
    return {
        "fine_tune_type": lora.type,
        "num_layers": n,
        "lora_parameters": {
            "rank": lora.rank,
            "scale": lora.scale,
            "dropout": lora.dropout,
            "keys": full_keys(model, lora.keys),
        },
        "base_model": base,
    }


def apply_adapters(model: nn.Module, lora: LoraConfig, base: str, warm_start: str = "",
                   seed: int | None = None) -> dict[str, Any]:
    """Freeze the base and add LoRA/DoRA layers (fresh, or loaded from `warm_start`). Returns the adapter config.

    `seed` seeds the fresh A matrices right before they are drawn, so the initial adapter does not depend
    on what else drew random numbers earlier in the process (first imports do).
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers, load_adapters

    model.freeze()
    if warm_start:
        path = Path(warm_start).expanduser()
        if not (path / ADAPTER_CONFIG).is_file():
            raise ModelError(f"model.adapter: {path} has no {ADAPTER_CONFIG}")
        check_adapter_files(path)
        try:
            load_adapters(model, str(path))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ModelError(f"model.adapter: {e}") from e
        cfg = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        cfg["base_model"] = base
    else:
        cfg = adapter_config(lora, model, base)
        if seed is not None:
            mx.random.seed(seed)
        linear_to_lora_layers(model, cfg["num_layers"], cfg["lora_parameters"], use_dora=lora.type == "dora")
    model.unfreeze(keys=["lora_a", "lora_b", "m"], strict=False)
    mx.eval(model.parameters())
    return cfg


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; quantized weights count their unpacked size."""
    from mlx_lm.utils import get_total_parameters

    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return trainable, get_total_parameters(model)


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def write_adapters(model: nn.Module, cfg: dict[str, Any], dest: Path) -> None:
    """Write adapter weights + config into the (existing, usually temporary) directory `dest`."""
    mx.save_safetensors(str(dest / ADAPTER_FILE), adapter_weights(model))
    (dest / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def load_for_inference(base: str, adapter: str | Path | None = None, dtype: str | None = None) -> tuple[nn.Module, Any]:
    """Base model (+ adapter) for generation or evaluation, in eval mode (CUDA graph limits set first)."""
    import mlx_lm
    from mlx_lm.utils import _download

    backend.limit_cuda_graphs()
    path = resolve_path(base)
    if not Path(path).is_dir():  # a Hugging Face id: check the downloaded (or cached) snapshot, not just local dirs
        try:
            path = str(_download(path))
        except Exception as e:  # hub errors, offline mode
            raise ModelError(f"cannot find model {base!r}: {e}") from e
    check_remote_code(Path(path), False)
    check_dimensions(Path(path))
    if adapter:
        check_adapter_files(Path(adapter))
    try:
        model, tok = mlx_lm.load(path, adapter_path=str(adapter) if adapter else None)
    except (FileNotFoundError, ValueError, KeyError, TypeError, OSError, RuntimeError) as e:
        raise ModelError(f"cannot load model from {path}" + (f" with {adapter}" if adapter else "") + f": {e}") from None
    check_template(tok)
    if not is_quantized(model) or dtype:
        model.set_dtype(getattr(mx, dtype or backend.detect().dtype))
    model.eval()
    return model, tok


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily swap LoRA/DoRA layers for their base layers (the reference / base model)."""
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    swapped = [(n, m) for n, m in model.named_modules() if isinstance(m, (LoRALinear, DoRALinear))]
    model.update_modules(tree_unflatten([(n, m.linear) for n, m in swapped]))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(swapped))


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Any
    model_dir: Path
    adapter_config: dict[str, Any]
    trainable: int
    total: int


def use_training_kernels(model: nn.Module, quantized_matmul: str) -> None:
    """This backend's choices for a model's training forward and backward: per-layer dequantization
    (core.dequantize), and on CPUs attention in query blocks (core.block_attention) and core.fast_exp's SwiGLU."""
    kind = backend.detect().kind
    dequantize.use(model, dequantize.chosen(quantized_matmul, kind))
    block_attention.use(model, block_attention.chunk_for(kind) > 0)
    fast_exp.use(model, fast_exp.wanted(kind))


def load_for_training(mcfg: ModelConfig, lora: LoraConfig, dtype: str, seed: int | None = None) -> Loaded:
    model, tok, model_dir = load_base(mcfg, dtype)
    use_training_kernels(model, mcfg.quantized_matmul)
    cfg = apply_adapters(model, lora, mcfg.path if mcfg.path != DEMO_MODEL else str(model_dir), mcfg.adapter, seed)
    trainable, total = parameter_counts(model)
    return Loaded(model, tok, model_dir, cfg, trainable, total)
