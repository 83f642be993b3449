"""An adapter fused into its base model, and the files a fused model directory copies from the base."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "generation_config.json", "tiktoken.model")


def model_logits(model: nn.Module, ids: list[int]) -> np.ndarray:
    """The model's float32 logits for one sequence of token ids, as a NumPy array [1, len(ids), vocab]."""
    out = model(mx.array([ids]))
    return np.array(out.astype(mx.float32))


def fuse_layers(model: nn.Module, dequantize: bool) -> int:
    """Fuse every adapter layer into the weights it adapts (in place); the number of layers fused."""
    fused = [(n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


def base_config(model_dir: Path) -> dict[str, Any]:
    """The base model's config.json, as mlx-lm reads it."""
    from mlx_lm.utils import load_config

    return load_config(model_dir)


def copy_tokenizer(src: Path, dest: Path, tok: Any) -> list[str]:
    """Copy the base's tokenizer files verbatim into `dest` (without any, the tokenizer saves itself); their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
            copied.append(name)
    if not any(n in copied for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")):
        tok.save_pretrained(str(dest))  # no tokenizer file to copy verbatim: let the tokenizer write itself
        copied.append("(saved by the tokenizer)")
    return copied
