"""Memory as it is: live readings for step events and gauges, the memory this machine lets training use
(`machine_budget_gb`), and a model's config.json without loading it (`model_config_for`).

The forecast of a config's peak is core.forecast; core.memory_probe measures real steps.
"""

from __future__ import annotations

import json
import os
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

    "demo" gives `core.demo.model_config` of its shape (read from the built demo model when it exists, for
    its exact vocabulary; never built here). A local directory gives its config.json. A Hugging Face id gives
    the config of KNOWN_CONFIGS or, if the model was downloaded, the cached config.json. Anything else: None.
    """
    from .config import DEMO_MODEL

    if model_path == DEMO_MODEL:
        from . import demo

        built = demo.default_dir() / "config.json"
        if built.is_file():
            read = _read_dir_config(built.parent)
            if read:
                read.setdefault("torch_dtype", "float32")
                return read
        return {**demo.model_config(demo.default_size()), "torch_dtype": "float32"}
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
    return cfg if isinstance(cfg, dict) else None


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
