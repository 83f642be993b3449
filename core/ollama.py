"""An Ollama Modelfile for an exported GGUF: FROM, the chat TEMPLATE in Ollama's Go-template syntax, stop tokens.

The template reproduces `core.template.MISTRAL_V3_CHAT_TEMPLATE` (Mistral-style chats with tool results):
the system prompt (Ollama's ``.System``: every system message, joined by a blank line) goes before the
last user message inside its ``[INST]``; an assistant turn is ``" " + content + EOS`` with the content's trailing
spaces cut, as the Hugging Face template's ``rstrip(' ')`` (Go templates have no trim: the loop over the content's
bytes keeps it up to its last non-space byte; ranging over an integer needs Go ≥ 1.22); a tool result is
``[TOOL_RESULTS] {"content": …}[/TOOL_RESULTS]``, its content embedded as-is when it is JSON text and as a
JSON string otherwise. Two things Ollama does before a template runs make it differ from the Hugging
Face rendering: it merges consecutive messages of one role with a blank line, and its ``json`` escapes
``<``, ``>`` and ``&``; neither occurs in conversations that alternate roles with JSON tool results.
Ollama adds BOS itself when the GGUF says ``add_bos_token``; otherwise the template starts with it.
"""

from __future__ import annotations

import copy
from typing import Any

from .template import MISTRAL_V3_CHAT_TEMPLATE, TemplateError, render_chat

MODELFILE = "Modelfile"
NUM_CTX_MAX = 8192

TEMPLATE = (
    '{{- $last := -1 }}'
    '{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $last = $i }}{{ end }}{{ end }}'
    '{{- range $i, $m := .Messages }}'
    '{{- if eq $m.Role "user" }}'
    '{{- if and (eq $i $last) $.System }}[INST] {{ $.System }}\n\n{{ $m.Content }}[/INST]'
    '{{- else }}[INST] {{ $m.Content }}[/INST]'
    '{{- end }}'
    '{{- else if eq $m.Role "assistant" }}{{ $text := "" }}{{ $kept := false }}'
    '{{- range $j := len $m.Content }}{{ if $kept }}{{ $text = slice $m.Content 0 $j }}{{ end }}'
    '{{- $kept = ne (index $m.Content $j) 32 }}{{ end }}'
    '{{- if $kept }}{{ $text = $m.Content }}{{ end }} {{ $text }}{EOS}'
    '{{- else if eq $m.Role "tool" }}[TOOL_RESULTS] {"content": '
    '{{ if and $m.Content (or (eq (slice $m.Content 0 1) "{") (eq (slice $m.Content 0 1) "[")) }}'
    '{{ $m.Content }}{{ else }}{{ json $m.Content }}{{ end }}}[/TOOL_RESULTS]'
    '{{- end }}'
    '{{- end }}'
)


class OllamaError(Exception):
    """A model whose chat template tunedeck cannot write for Ollama."""


def mistral_style(hf: Any, conversations: list[list[dict[str, str]]]) -> bool:
    """True if the tokenizer's chat template renders every conversation as `MISTRAL_V3_CHAT_TEMPLATE` does."""
    if not getattr(hf, "chat_template", None) or hf.bos_token is None or hf.eos_token is None:
        return False
    if hf.chat_template == MISTRAL_V3_CHAT_TEMPLATE:
        return True
    ref = copy.copy(hf)
    ref.chat_template = MISTRAL_V3_CHAT_TEMPLATE
    try:
        return all(render_chat(hf, c, False) == render_chat(ref, c, False) for c in conversations)
    except TemplateError:
        return False


def template_for(hf: Any, add_bos: bool) -> str:
    """The Ollama TEMPLATE for a Mistral-style tokenizer: BOS first unless llama.cpp adds it (`add_bos`)."""
    return ("" if add_bos else hf.bos_token) + TEMPLATE.replace("{EOS}", hf.eos_token)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(gguf_name: str, hf: Any, add_bos: bool, context_length: int,
              conversations: list[list[dict[str, str]]]) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, stop tokens and the context size.

    OllamaError unless the model's chat template is Mistral-style on `conversations` (`mistral_style`)."""
    if not mistral_style(hf, conversations):
        raise OllamaError("--ollama writes a TEMPLATE for Mistral-style chat templates only, and this model's "
                          "chat template renders the run's conversations differently; use --gguf and write "
                          "the Modelfile by hand")
    template = template_for(hf, add_bos)
    if '"""' in template:
        raise OllamaError('the chat template contains """, which a Modelfile cannot quote')
    stops = dict.fromkeys([hf.eos_token, "[INST]"])
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops if s]
    lines.append(f"PARAMETER num_ctx {min(context_length, NUM_CTX_MAX)}")
    return "\n".join(lines) + "\n"
