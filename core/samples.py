"""Live samples during training: the current adapter's greedy answers to a few fixed held-out prompts.

The prompts are those of the first `train.sample_prompts` validation examples, rendered as generation does
(chat template with the generation prompt and the example's tools, cut from the left to data.max_seq_len less
`train.sample_tokens`). Each answer becomes a `sample` event: the prompt's index, its last user message, the
text, the tokens generated and whether it is a well-formed tool call (`valid`, None when the example's own
completion is not a call). The trainer calls `Sampler.answers` every `train.sample_every` steps and at the last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.nn as nn

from . import data, toolcalls
from .config import Config
from .template import Encoded, encode_prompt, truncate

QUESTION_CHARS = 300  # the prompt's last user message, as the event carries it


@dataclass
class Sampler:
    """The fixed prompts (token ids), whether each one's reference completion is a tool call, the dataset's
    tools and format, and the answers' token budget."""

    prompts: list[list[int]]
    questions: list[str]
    calls: list[bool]
    box: toolcalls.Toolbox
    max_tokens: int

    def answers(self, model: nn.Module, tokenizer: Any) -> list[dict[str, Any]]:
        """The `sample` events' fields for each prompt: greedy answers with the model in eval mode (dropout
        off), which is put back in the mode it was in."""
        was_training = model.training
        model.eval()
        try:
            out = []
            for i, ids in enumerate(self.prompts):
                text, tokens = greedy(model, tokenizer, ids, self.max_tokens)
                valid = toolcalls.check_tool_call(text, self.box).ok if self.calls[i] else None
                out.append({"prompt": i, "question": self.questions[i], "text": text, "valid": valid,
                            "tokens": tokens})
            return out
        finally:
            model.train(was_training)


def greedy(model: nn.Module, tokenizer: Any, ids: list[int], max_tokens: int) -> tuple[str, int]:
    """The greedy (argmax) answer to prompt `ids` and the number of tokens generated, as `mlx_lm.generate`."""
    import mlx_lm

    text, tokens = "", 0
    for r in mlx_lm.stream_generate(model, tokenizer, ids, max_tokens=max_tokens):
        text += r.text
        tokens = r.generation_tokens
    return text, tokens


def prepare(cfg: Config, tokenizer: Any, valid: list[data.Example], everything: list[data.Example],
            warn: Callable[[str], None]) -> Sampler | None:
    """The sampler of a run, or None when samples are off (train.sample_every = 0) or there is no validation
    example. `everything` (both splits) gives the tool-call format and, without tools.json, the known tools."""
    t = cfg.train
    chosen = valid[: t.sample_prompts]
    if not t.sample_every or not chosen:
        return None
    completions = [e.completion for e in everything if e.label]
    schemas = next((e.tools for e in everything if e.tools), None)
    try:
        box = toolcalls.toolbox(completions, Path(cfg.data.path), schemas)
    except ValueError as e:
        warn(f"samples check tool calls against the tools seen in the data: {e}")
        box = toolcalls.toolbox(completions)
    bos = getattr(tokenizer, "bos_token_id", None)
    limit = max(cfg.data.max_seq_len - t.sample_tokens, 8)
    prompts = []
    for e in chosen:
        ids = encode_prompt(tokenizer, e.prompt, e.tools)
        prompts.append(list(truncate(Encoded(ids, len(ids)), limit, bos).ids))
    calls = [box.format is not None and toolcalls.parse_tool_call(e.completion, box.format) is not None
             for e in chosen]
    return Sampler(prompts, [_question(e) for e in chosen], calls, box, t.sample_tokens)


def _question(example: data.Example) -> str:
    """The prompt's last user message (its text, cut to QUESTION_CHARS), else ""."""
    for m in reversed(example.prompt):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"][:QUESTION_CHARS]
    return ""
