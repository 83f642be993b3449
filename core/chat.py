"""Streaming generation with a run's adapter, a checkpoint, or a fused model; the base with the adapter off.

`resolve_target` turns what the user points at (a run directory, an adapter or checkpoint directory,
or a fused model directory) into a base model and an adapter directory; `load_chat_model` loads them
once; `ChatModel.reply(..., adapter=False)` runs the same weights with the LoRA layers swapped out
(`core.model.adapters_disabled`), so comparing base and adapter never loads the model twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import ADAPTER_CONFIG, ADAPTER_FILE
from .rundir import RunDir

#: Bidirectional-override code points that reorder how a terminal shows the text around them.


class ChatError(Exception):
    """A path that cannot be chatted with, with the reason."""


@dataclass
class Chunk:
    """A piece of streamed reply text and the generation speed so far."""

    text: str
    tokens_per_sec: float
    finish_reason: str | None = None  # "stop" / "length" on the last chunk


@dataclass
class ChatModel:
    model: Any
    tokenizer: Any
    base: str
    adapter: Path | None

    def reply(self, messages: list[dict[str, Any]], adapter: bool = True, max_tokens: int = 256,
              temperature: float = 0.7, top_p: float = 1.0, tools: list[dict[str, Any]] | None = None) -> Iterator[Chunk]:
        """Stream a reply (the tool schemas `tools` rendered with the prompt); with adapter=False the LoRA
        layers are swapped out while it generates."""
        if adapter or self.adapter is None:
            yield from stream_reply(self.model, self.tokenizer, messages, max_tokens, temperature, top_p, tools)
            return
        from .model import adapters_disabled

        with adapters_disabled(self.model):
            yield from stream_reply(self.model, self.tokenizer, messages, max_tokens, temperature, top_p, tools)


def _run_base(run_dir: Path) -> str:
    from .config import ConfigError, load

    try:
        cfg, _ = load(run_dir / "config.toml")
    except ConfigError as e:
        raise ChatError(f"{run_dir / 'config.toml'}: {e}") from None
    return cfg.model.path


def resolve_target(path: Path, model: str | None = None) -> tuple[str, Path | None]:
    """(base model, adapter dir or None) for a run, checkpoint, adapter or fused-model directory.

    `model` overrides the base (default: the run's `model.path`, else the adapter's `base_model`).
    """
    from .checkpoint_files import latest_checkpoint

    if not path.is_dir():
        raise ChatError(f"{path} is not a directory")
    if RunDir(path).is_run():
        adapter = path / "adapters"
        if not (adapter / ADAPTER_FILE).is_file():
            adapter = latest_checkpoint(path)
        if adapter is None:
            raise ChatError(f"{path} has no adapters yet (no checkpoint has been written)")
        return model or _run_base(path), adapter
    if (path / ADAPTER_CONFIG).is_file():
        if not (path / ADAPTER_FILE).is_file():
            raise ChatError(f"{path} has {ADAPTER_CONFIG} but no {ADAPTER_FILE}")
        if model:
            return model, path
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        if RunDir(run).is_run():
            return _run_base(run), path
        try:
            base = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model")
        except (OSError, ValueError, AttributeError):
            base = None
        if not isinstance(base, str) or not base:
            raise ChatError(f"{path / ADAPTER_CONFIG} names no base_model; give the base with --model")
        return base, path
    if (path / "config.json").is_file():
        if model:
            raise ChatError(f"{path} is a full model (fused); --model applies to adapters only")
        return str(path), None
    raise ChatError(f"{path} is not a run, checkpoint, adapter or model directory")


def load_chat_model(base: str, adapter: Path | None) -> ChatModel:
    """Load the base model with the adapter applied (if any), in eval mode.

    The weights are evaluated here, so that generation may then run in any thread (MLX streams are
    per thread: a lazy array made in one thread cannot be evaluated in another).
    """
    import mlx.core as mx

    from .model import ModelError, load_for_inference

    try:
        model, tokenizer = load_for_inference(base, adapter)
    except (ModelError, OSError, ValueError, KeyError) as e:
        raise ChatError(f"cannot load {base}" + (f" with {adapter}" if adapter else "") + f": {e}") from None
    mx.eval(model.parameters())
    return ChatModel(model, tokenizer, base, adapter)


def stream_reply(model: Any, tokenizer: Any, messages: list[dict[str, Any]], max_tokens: int = 256,
                 temperature: float = 0.7, top_p: float = 1.0, tools: list[dict[str, Any]] | None = None) -> Iterator[Chunk]:
    """Stream the assistant's reply to `messages` (and the tool schemas `tools`), rendered with the
    tokenizer's chat template."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from .template import encode_prompt

    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    ids = encode_prompt(tokenizer, messages, tools)
    sampler = make_sampler(temp=max(temperature, 0.0), top_p=top_p if 0 < top_p < 1 else 0.0)
    for r in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
        yield Chunk(r.text, float(r.generation_tps), r.finish_reason)
