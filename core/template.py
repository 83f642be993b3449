"""Render examples with the tokenizer's own chat template and find the loss-mask boundary.

`encode` renders the prompt twice through `apply_chat_template`: once with the completion as a
final assistant turn (`full`) and once with a generation prompt (`head`). The trained tokens are
`full[len(head):]`. If a template re-renders earlier turns differently once an assistant turn
follows (so `head` is not a prefix of `full`), the boundary falls back to the longest common
prefix of the two, so no prompt token is ever trained on.

Tool schemas (`tools=`) and structured tool calls (assistant messages with ``tool_calls``, tool
results with ``tool_call_id``) are passed to the template as `apply_chat_template` passes them.
With ``train_on="all_assistant"`` (SFT) the earlier assistant turns are trained too: each one's
text (what rendering up to it adds to rendering up to the turn before it with a generation prompt)
is found in the whole conversation's rendering and mapped to tokens by their character offsets
(`Encoded.earlier`); this equals TRL's ``assistant_only_loss`` on a template with ``{% generation %}``
markers around each assistant turn (tested).

The completion part always holds an end-of-turn token: if none of the tokenizer's EOS ids
(`eos_token_id`, plus mlx-lm's `eos_token_ids`) appears after the boundary, `eos_token_id` is
appended.

Tokenizers without a chat template fall back to plain lines, `"role: content"` joined with
newlines and ending in `"assistant:"`, then `" " + completion` and EOS (`has_chat_template` tells
which path is taken). The "text" format (empty prompt) encodes `BOS? + text + EOS`, with BOS only
where the tokenizer adds one itself.

Truncation to `max_seq_len` keeps the completion and cuts the prompt from the left (keeping a
leading BOS); a completion that does not fit even with the prompt reduced to BOS is cut on the
right and flagged `completion_too_long`.

Chat templates come with the model directory, so they are untrusted: they are rendered by
`render_chat` through jinja2's immutable sandbox (`core.template_sandbox`) with transformers' own
globals, filters and extensions (the same text as `apply_chat_template`), bounded in time
(`RENDER_SECONDS` per rendering: every loop iteration, call, operator and filter checks the
deadline) and in size (`RENDER_CHARS`: no output, string, list or number the template builds may
exceed it; operations that multiply sizes are checked before they run). A violation raises
`TemplateError` naming the file that holds the template and the limit.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunedeck.core import template_sandbox, toolcalls
from tunedeck.core.fsutil import atomic_write_text

#: Mistral v0.3 (tokenizer v3) chat template, matching mistral-common's reference encoding:
#: system prompts (joined by a blank line) go in front of the LAST user message; assistant turns
#: are `" " + content.rstrip(" ") + "</s>"`; tool results are
#: `[TOOL_RESULTS] {"content": <content>, "call_id": <id>}[/TOOL_RESULTS]` where content that is
#: JSON text (starts with `{` or `[`) is embedded as-is and anything else as a JSON string, and
#: the call id appears only if the message has a `tool_call_id`. Consecutive same-role messages
#: are not merged (mistral-common merges them with a blank line). With `tools`,
#: `[AVAILABLE_TOOLS] <json list>[/AVAILABLE_TOOLS]` goes in front of the last user message; an
#: assistant turn with `tool_calls` is `[TOOL_CALLS] [{"name", "arguments", "id"?}, ...]</s>`.
MISTRAL_V3_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', last_user=-1) %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' and m['content'] %}"
    "{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + m['content'] %}"
    "{%- elif m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{{- bos_token }}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'user' %}"
    "{%- if tools and loop.index0 == ns.last_user %}"
    "{{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif %}"
    "{%- if loop.index0 == ns.last_user and ns.system %}"
    "{{- '[INST] ' + ns.system + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + m['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif m['role'] == 'assistant' and m['tool_calls'] is defined and m['tool_calls'] %}"
    "{{- '[TOOL_CALLS] [' }}"
    "{%- for tc in m['tool_calls'] %}"
    "{%- set f = tc['function'] %}"
    "{{- '{\"name\": ' + f['name'] | tojson + ', \"arguments\": ' + f['arguments'] | tojson }}"
    "{%- if tc['id'] is defined and tc['id'] and tc['id'] != 'null' %}{{- ', \"id\": ' + tc['id'] | tojson }}{%- endif %}"
    "{{- '}' + ('' if loop.last else ', ') }}"
    "{%- endfor %}"
    "{{- ']' + eos_token }}"
    "{%- elif m['role'] == 'assistant' %}"
    "{{- ' ' + m['content'].rstrip(' ') + eos_token }}"
    "{%- elif m['role'] == 'tool' %}"
    "{%- set c = m['content'] %}"
    "{%- set body = c if c[:1] in ['{', '['] else c | tojson %}"
    "{%- if m['tool_call_id'] is defined and m['tool_call_id'] %}"
    "{{- '[TOOL_RESULTS] {\"content\": ' + body + ', \"call_id\": ' + m['tool_call_id'] | tojson"
    " + '}[/TOOL_RESULTS]' }}"
    "{%- else %}{{- '[TOOL_RESULTS] {\"content\": ' + body + '}[/TOOL_RESULTS]' }}{%- endif %}"
    "{%- elif m['role'] != 'system' %}"
    "{{- raise_exception('Unsupported role: ' + m['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
)

MISTRAL_V3_MODEL_FILE = "mistral_instruct_tokenizer_240323.model.v3"

#: What SFT trains: every assistant turn (as TRL's assistant_only_loss) or the last one only.
TRAIN_ON = ("all_assistant", "last")

#: Limits for one rendering of an (untrusted) chat template: wall-clock seconds, and characters of
#: any text (or rendered size of any list/number) it produces.
RENDER_SECONDS = 10.0
RENDER_CHARS = 10_000_000


class TemplateError(ValueError):
    """The model's chat template failed or went past a limit; the message names the file that holds it."""


class TemplateLimitError(TemplateError):
    """The chat template ran past `RENDER_SECONDS` or built more than `RENDER_CHARS` characters."""


def template_file(tokenizer: Any) -> str:
    """The file the tokenizer's chat template came from (for messages), or a description of it."""
    d = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if str(d) and d.is_dir():
        for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
            if (d / name).is_file():
                return str(d / name)
    return "the tokenizer's chat_template"


def _hf(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside an mlx-lm wrapper (or the tokenizer itself)."""
    from transformers import PreTrainedTokenizerBase

    inner = getattr(tokenizer, "_tokenizer", None)  # a Hugging Face tokenizer's own `_tokenizer` is the Rust one
    return inner if isinstance(inner, PreTrainedTokenizerBase) else tokenizer


def _jinja_rendered(tokenizer: Any) -> bool:
    """True if `apply_chat_template` would render the tokenizer's Jinja template (no custom renderer)."""
    from transformers import PreTrainedTokenizerBase

    hf = _hf(tokenizer)
    return (getattr(tokenizer, "_chat_template", None) is None and isinstance(hf, PreTrainedTokenizerBase)
            and type(hf).apply_chat_template is PreTrainedTokenizerBase.apply_chat_template
            and getattr(hf, "chat_template", None) is not None)


def _template_vars(tokenizer: Any) -> dict[str, Any]:
    """What `apply_chat_template` passes besides the messages: special tokens, mlx-lm's thinking flag."""
    out: dict[str, Any] = dict(_hf(tokenizer).special_tokens_map)
    if tokenizer is not _hf(tokenizer):
        out["enable_thinking"] = bool(getattr(tokenizer, "has_thinking", False))
    return out


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool,
                tools: list[dict[str, Any]] | None = None) -> str:
    """The chat template's text for `messages` (and the tool schemas `tools`), as
    `apply_chat_template(tokenize=False, tools=tools)` renders it, within `RENDER_SECONDS` and
    `RENDER_CHARS`; TemplateError (naming the file) if it fails."""
    source = template_file(tokenizer)
    chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
    try:
        return template_sandbox.render(_hf(tokenizer).get_chat_template(), RENDER_SECONDS, RENDER_CHARS,
                                       messages=chat, tools=tools or None, documents=None,
                                       add_generation_prompt=add_generation_prompt, **_template_vars(tokenizer))
    except template_sandbox.LimitHit as e:
        raise TemplateLimitError(f"{source}: chat_template {e}") from None
    except Exception as e:  # noqa: BLE001 - whatever an untrusted template does wrong, it is the template's
        raise TemplateError(f"{source}: chat_template cannot render this conversation: "
                            f"{type(e).__name__}: {e}") from None


@dataclass
class Encoded:
    """Token ids of one example; `ids[prompt_len:]` are the completion tokens, and `earlier` the
    token spans [start, end) of earlier assistant turns that are trained too (SFT's all_assistant)."""

    ids: list[int]
    prompt_len: int
    truncated_prompt_tokens: int = 0
    completion_too_long: bool = False
    earlier: list[tuple[int, int]] = field(default_factory=list)

    @property
    def completion_len(self) -> int:
        return len(self.ids) - self.prompt_len

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Every trained span [start, end), in order: the earlier assistant turns, then the completion."""
        return [*self.earlier, (self.prompt_len, len(self.ids))]

    @property
    def trained(self) -> list[int]:
        """1 for each trained token, 0 for the others (as long as `ids`)."""
        mask = [0] * len(self.ids)
        for a, b in self.spans:
            mask[a:b] = [1] * (b - a)
        return mask


def has_chat_template(tokenizer) -> bool:
    """True if the tokenizer (HF or mlx-lm wrapper) has a chat template to render with."""
    flag = getattr(tokenizer, "has_chat_template", None)
    if isinstance(flag, bool):
        return flag
    return bool(getattr(tokenizer, "chat_template", None))


def _ids(out: Any) -> list[int]:
    """Normalise `apply_chat_template(tokenize=True)` output (list, BatchEncoding, dict, batch)."""
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if out and isinstance(out[0], (list, tuple)):
        out = list(out[0])
    return [int(i) for i in out]


def _apply(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool,
           tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of the chat template's rendering (bounded, see `render_chat`); tokenizers with
    their own renderer (not a Jinja template) are left to `apply_chat_template`."""
    if not _jinja_rendered(tokenizer):
        extra = {"tools": tools} if tools else {}
        return _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                                  **extra))
    text = render_chat(tokenizer, messages, add_generation_prompt, tools)
    return _ids(_hf(tokenizer)(text, add_special_tokens=False))


def _spans_supported(tokenizer) -> bool:
    """Whether earlier assistant turns can be located: a Jinja template and a fast tokenizer (offsets)."""
    return _jinja_rendered(tokenizer) and bool(getattr(_hf(tokenizer), "is_fast", False))


def _earlier_spans(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, text: str,
                   offsets: list[tuple[int, int]], boundary: int) -> list[tuple[int, int]]:
    """Token spans (before `boundary`) of the assistant turns before the last one, in the rendering
    `text` of `messages` whose tokens have character `offsets`.

    Each turn's own text is what rendering the conversation up to it adds to rendering it up to the
    turn before with a generation prompt (as the last turn's boundary is found); that text is looked
    for in `text`, after the previous turn's, and the tokens it covers are the span. A turn whose
    text is not found stays untrained.
    """
    spans, pos = [], 0
    for i in [i for i, m in enumerate(messages[:-1]) if m["role"] == "assistant" and i > 0]:
        head = render_chat(tokenizer, messages[:i], True, tools)
        upto = render_chat(tokenizer, messages[: i + 1], False, tools)
        piece = upto[len(os.path.commonprefix([head, upto])):]
        at = text.find(piece, pos) if piece.strip() else -1
        if at < 0:
            continue
        pos = at + len(piece)
        covered = [j for j, (a, b) in enumerate(offsets[:boundary]) if a < pos and b > at]
        if covered:
            spans.append((covered[0], covered[-1] + 1))
    return spans


def _text_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _bos(tokenizer) -> list[int]:
    """[bos_token_id] if the tokenizer adds a BOS when encoding plain text, else []."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    probe = list(tokenizer.encode("a"))
    return [bos] if probe[:1] == [bos] else []


def eos_ids(tokenizer) -> set[int]:
    """Token ids that end a turn: `eos_token_id` plus mlx-lm's `eos_token_ids`, if any."""
    extra = getattr(tokenizer, "eos_token_ids", None)
    ids = {extra} if isinstance(extra, int) else set(extra or ())
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _text(message: dict[str, Any]) -> str:
    """A message as plain text: its content, or its tool calls as ``[TOOL_CALLS] [...]``."""
    return toolcalls.calls_text(message["tool_calls"]) if message.get("tool_calls") else message["content"]


def _plain_prompt(prompt: list[dict[str, Any]]) -> str:
    lines = [f"{m['role']}: {_text(m)}" for m in prompt]
    return "\n".join([*lines, "assistant:"])


def encode_prompt(tokenizer, prompt: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Ids of the prompt ready for generation (chat template with generation prompt and the tool
    schemas, or the plain-lines fallback, which has no place for tools)."""
    if not prompt:
        return _bos(tokenizer)
    if has_chat_template(tokenizer):
        return _apply(tokenizer, prompt, True, tools)
    return _bos(tokenizer) + _text_ids(tokenizer, _plain_prompt(prompt))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _render(tokenizer, prompt: list[dict[str, Any]], answer: dict[str, Any], tools: list[dict[str, Any]] | None,
            train_on: str) -> Encoded:
    eos = getattr(tokenizer, "eos_token_id", None)
    if not prompt:
        bos = _bos(tokenizer)
        tail = [eos] if eos is not None else []
        return Encoded(bos + _text_ids(tokenizer, _text(answer)) + tail, len(bos))
    head = encode_prompt(tokenizer, prompt, tools)
    earlier: list[tuple[int, int]] = []
    messages = [*prompt, answer]
    if has_chat_template(tokenizer) and train_on == "all_assistant" and _spans_supported(tokenizer):
        text = render_chat(tokenizer, messages, False, tools)
        out = _hf(tokenizer)(text, add_special_tokens=False, return_offsets_mapping=True)
        full = list(out["input_ids"])
        boundary = _common_prefix(head, full)
        earlier = _earlier_spans(tokenizer, messages, tools, text, out["offset_mapping"], boundary)
    elif has_chat_template(tokenizer):
        full = _apply(tokenizer, messages, False, tools)
        boundary = _common_prefix(head, full)
    else:
        full = head + _text_ids(tokenizer, " " + _text(answer))
        boundary = len(head)
    if eos is not None and not eos_ids(tokenizer).intersection(full[boundary:]):
        full.append(eos)
    return Encoded(full, boundary, earlier=earlier)


def truncate(enc: Encoded, max_seq_len: int | None, bos_token_id: int | None) -> Encoded:
    """Fit `enc` into `max_seq_len` tokens: cut the prompt from the left (keeping a leading BOS);
    if the completion alone does not fit, empty the prompt (but BOS) and cut the completion."""
    if max_seq_len is None or len(enc.ids) <= max_seq_len:
        return enc
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be at least 1, got {max_seq_len}")
    prompt, completion = enc.ids[: enc.prompt_len], enc.ids[enc.prompt_len :]
    keep_bos = 1 if prompt[:1] == [bos_token_id] and bos_token_id is not None else 0
    keep_bos = min(keep_bos, max_seq_len - 1)
    if keep_bos + len(completion) > max_seq_len:
        cut = len(prompt) - keep_bos
        return Encoded(prompt[:keep_bos] + completion[: max_seq_len - keep_bos], keep_bos, cut, True)
    cut = len(prompt) - (max_seq_len - len(completion))
    kept = prompt[:keep_bos] + prompt[keep_bos + cut :]
    first = keep_bos + cut  # the first prompt token kept after the BOS
    earlier = [(max(a, first) - cut, b - cut) for a, b in enc.earlier if b > first]
    return Encoded(kept + completion, len(kept), cut, False, earlier)


def encode(tokenizer, prompt: list[dict[str, Any]], completion: str | dict[str, Any], max_seq_len: int | None = None,
           tools: list[dict[str, Any]] | None = None, train_on: str = "last") -> Encoded:
    """Token ids of prompt + completion (a text or an assistant message, which may make tool calls)
    with the prompt/completion boundary, truncated if asked. `tools` are rendered with the prompt;
    train_on="all_assistant" also finds the spans of the prompt's assistant turns (`Encoded.earlier`)."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    answer = {"role": "assistant", "content": completion} if isinstance(completion, str) else completion
    enc = _render(tokenizer, prompt, answer, tools, train_on)
    return truncate(enc, max_seq_len, getattr(tokenizer, "bos_token_id", None))


def encode_example(tokenizer, ex, max_seq_len: int | None = None, train_on: str = "last", partner=None) -> Encoded:
    """`encode` for a `core.data.Example`, with its tools; `partner`'s completion replaces its own
    (KTO's KL pair: this prompt, another example's answer)."""
    return encode(tokenizer, ex.prompt, (partner or ex).answer, max_seq_len, ex.tools, train_on)


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """One display string per token id, keeping leading spaces that decoding alone would drop
    (each id is decoded after an anchor token, and the anchor's text is removed)."""
    anchor = _text_ids(tokenizer, "a")[-1:]
    base = tokenizer.decode(anchor, skip_special_tokens=False)
    pieces = []
    for i in ids:
        text = tokenizer.decode(anchor + [i], skip_special_tokens=False)
        if anchor and text.startswith(base):
            pieces.append(text[len(base) :])
        else:
            pieces.append(tokenizer.decode([i], skip_special_tokens=False))
    return pieces


def mistral_v3_model_path() -> Path:
    """Path of the Mistral-7B-Instruct-v0.3 SentencePiece model shipped by `mistral-common`."""
    import mistral_common  # test/demo-only dependency

    path = Path(mistral_common.__file__).parent / "data" / MISTRAL_V3_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (mistral-common without its tokenizer data?)")
    return path


def write_mistral_v3_tokenizer(dest: str | os.PathLike[str]) -> Path:
    """Write a Hugging Face tokenizer dir for Mistral-7B-Instruct-v0.3 (from mistral-common's
    bundled model) with `MISTRAL_V3_CHAT_TEMPLATE`; load it with `AutoTokenizer.from_pretrained`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_v3_model_path(), dest / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "chat_template": MISTRAL_V3_CHAT_TEMPLATE,
    }
    atomic_write_text(dest / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    return dest
