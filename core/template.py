"""Render examples with the tokenizer's own chat template and find the loss-mask boundary.

`encode` renders the prompt twice through `apply_chat_template`: once with the completion as a
final assistant turn (`full`) and once with a generation prompt (`head`). The trained tokens are
`full[len(head):]`. If a template re-renders earlier turns differently once an assistant turn
follows (so `head` is not a prefix of `full`), the boundary falls back to the longest common
prefix of the two, so no prompt token is ever trained on.

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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunedeck.core.fsutil import atomic_write_text

#: Mistral v0.3 (tokenizer v3) chat template, matching mistral-common's reference encoding:
#: system prompts (joined by a blank line) go in front of the LAST user message; assistant turns
#: are `" " + content.rstrip(" ") + "</s>"`; tool results are
#: `[TOOL_RESULTS] {"content": <content>, "call_id": <id>}[/TOOL_RESULTS]` where content that is
#: JSON text (starts with `{` or `[`) is embedded as-is and anything else as a JSON string, and
#: the call id appears only if the message has a `tool_call_id`. Consecutive same-role messages
#: are not merged (mistral-common merges them with a blank line).
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
    "{%- if loop.index0 == ns.last_user and ns.system %}"
    "{{- '[INST] ' + ns.system + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + m['content'] + '[/INST]' }}{%- endif %}"
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


@dataclass
class Encoded:
    """Token ids of one example; `ids[prompt_len:]` are the trained (completion) tokens."""

    ids: list[int]
    prompt_len: int
    truncated_prompt_tokens: int = 0
    completion_too_long: bool = False

    @property
    def completion_len(self) -> int:
        return len(self.ids) - self.prompt_len


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


def _apply(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    return _ids(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt
        )
    )


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


def _plain_prompt(prompt: list[dict[str, str]]) -> str:
    lines = [f"{m['role']}: {m['content']}" for m in prompt]
    return "\n".join([*lines, "assistant:"])


def encode_prompt(tokenizer, prompt: list[dict[str, str]]) -> list[int]:
    """Ids of the prompt ready for generation (chat template with generation prompt, or fallback)."""
    if not prompt:
        return _bos(tokenizer)
    if has_chat_template(tokenizer):
        return _apply(tokenizer, prompt, add_generation_prompt=True)
    return _bos(tokenizer) + _text_ids(tokenizer, _plain_prompt(prompt))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _render(tokenizer, prompt: list[dict[str, str]], completion: str) -> Encoded:
    eos = getattr(tokenizer, "eos_token_id", None)
    if not prompt:
        bos = _bos(tokenizer)
        tail = [eos] if eos is not None else []
        return Encoded(bos + _text_ids(tokenizer, completion) + tail, len(bos))
    head = encode_prompt(tokenizer, prompt)
    if has_chat_template(tokenizer):
        full = _apply(tokenizer, [*prompt, {"role": "assistant", "content": completion}], False)
        boundary = _common_prefix(head, full)
    else:
        full = head + _text_ids(tokenizer, " " + completion)
        boundary = len(head)
    if eos is not None and not eos_ids(tokenizer).intersection(full[boundary:]):
        full.append(eos)
    return Encoded(full, boundary)


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
    return Encoded(kept + completion, len(kept), cut, False)


def encode(
    tokenizer, prompt: list[dict[str, str]], completion: str, max_seq_len: int | None = None
) -> Encoded:
    """Token ids of prompt + completion with the prompt/completion boundary, truncated if asked."""
    enc = _render(tokenizer, prompt, completion)
    return truncate(enc, max_seq_len, getattr(tokenizer, "bos_token_id", None))


def encode_example(tokenizer, ex, max_seq_len: int | None = None) -> Encoded:
    """`encode` for a `core.data.Example`."""
    return encode(tokenizer, ex.prompt, ex.completion, max_seq_len)


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
