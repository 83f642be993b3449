"""One dataset record (a parsed JSON object) in a known format → its messages, label and own tool schemas.

Formats:

- ``kto``: ``{"conversations": [{"role", "content"}, ...], "label": bool}``
- ``messages``: ``{"messages": [{"role", "content"}, ...], "label"?: bool}``
- ``trl_unpaired``: ``{"prompt", "completion", "label"}``; prompt and completion are strings or
  message lists (a string prompt becomes one user message; messages before the last assistant
  turn of a completion list join the prompt). Both plain strings: `Example.text_prompt` keeps the
  prompt text, which training reads raw, as TRL does (`data.string_format`, core.batching.encode_raw)
- ``prompt_completion``: the same without a label (a file may mix the two)
- ``sharegpt``: ``{"conversations": [{"from", "value"}, ...]}``; ``from`` maps human/user ->
  user, gpt/assistant/function_call -> assistant (a function call is the call JSON as text),
  system -> system, tool/observation/function_response -> tool
- ``text``: ``{"text"}`` (SFT only): prompt ``[]``, completion = the text

Roles are system, user, assistant, tool, in any order; the last turn must be the assistant's and
becomes the completion, earlier turns the prompt. Content must be a non-empty string, except on an
assistant turn with ``tool_calls`` (`core.data_tools`); other keys of a message and of a record are
ignored, but these. A record's own ``tools`` are checked and its calls checked against them, else
against the file's.

Labels: ``true``/``false``. ``1``/``0`` and the strings ``"true"``/``"false"`` (any case) are read
as the boolean with a warning; anything else (including null) is an error.

Every problem of a record is collected (`Bad`), each with its field (e.g. ``conversations[2].role``),
a plain-English reason and a code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from . import toolcalls
from .data_read import type_name
from .data_tools import Found, tool_calls, tool_result, tool_schemas

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}
COMPATIBLE = {"trl_unpaired": "prompt_completion", "prompt_completion": "trl_unpaired"}

Specs = dict[str, toolcalls.ToolSpec]


class Bad(Exception):
    """One line's validation problems."""

    def __init__(self, *problems: tuple[str, str, str]):
        self.items = problems  # (field, message, code)


def messages(value: Any, fld: str, sharegpt: bool = False, tools: Specs | None = None,
             known_ids: set[str] | None = None, deferred: Found | None = None) -> list[dict[str, Any]]:
    """Validate a message list (structured tool calls checked against `tools`, where known); raise
    Bad listing every problem in it. The last message's schema problems (unknown tool, missing
    argument, wrong type) go to `deferred` when given: an undesirable example may show a wrong call."""
    if not isinstance(value, list):
        raise Bad((fld, f"expected a list of messages, got {type_name(value)}", "type"))
    if not value:
        raise Bad((fld, "empty conversation", "empty"))
    rkey, ckey = ("from", "value") if sharegpt else ("role", "content")
    out, bad, call_ids = [], [], set(known_ids or ())
    for i, m in enumerate(value):
        at = f"{fld}[{i}]"
        if not isinstance(m, dict):
            bad.append((at, f"expected an object with {rkey!r} and {ckey!r}, got {type_name(m)}", "type"))
            continue
        role = _role(m, f"{at}.{rkey}", rkey, sharegpt, bad)
        msg: dict[str, Any] = {"role": role, "content": m.get(ckey)}
        calls = None if sharegpt else m.get("tool_calls")
        if calls is not None and calls != []:
            last = deferred is not None and i == len(value) - 1
            _calling_turn(msg, calls, at, ckey, tools, bad, deferred if last else bad, call_ids)
        else:
            _text_content(m, f"{at}.{ckey}", ckey, bad)
        if role == "tool" and not sharegpt:
            tool_result(m, at, call_ids, msg, bad)
        out.append(msg)
    if bad:
        raise Bad(*bad)
    if out[-1]["role"] != "assistant":
        last = f"{fld}[{len(out) - 1}].{rkey}"
        msg = f"conversation must end with an assistant turn, not {out[-1]['role']!r}"
        raise Bad((last, msg, "no_assistant"))
    return out


def _role(m: dict, at: str, rkey: str, sharegpt: bool, bad: Found) -> Any:
    """A message's role (ShareGPT's mapped to ours); a bad one is reported and returned as written."""
    role = m.get(rkey)
    if rkey not in m:
        bad.append((at, "missing", "missing"))
    elif not isinstance(role, str):
        bad.append((at, f"expected a string, got {type_name(role)}", "type"))
    elif (SHAREGPT_ROLES.get(role) if sharegpt else role if role in ROLES else None) is None:
        known = ", ".join(SHAREGPT_ROLES if sharegpt else ROLES)
        bad.append((at, f"unknown role {role!r} (expected one of {known})", "role"))
    else:
        role = SHAREGPT_ROLES[role] if sharegpt else role
    return role


def _calling_turn(msg: dict[str, Any], calls: Any, at: str, ckey: str, tools: Specs | None, bad: Found,
                  schema_bad: Found, call_ids: set[str]) -> None:
    """A message with tool calls: only an assistant's; its calls normalised into `msg` (their ids join
    `call_ids`), its content a string, or null / "" (then "")."""
    if msg["role"] != "assistant":
        bad.append((f"{at}.tool_calls", f"only assistant messages make tool calls, not {msg['role']!r}", "tool_calls"))
    else:
        msg["tool_calls"] = tool_calls(calls, f"{at}.tool_calls", tools, bad, schema_bad)
        call_ids.update(c["id"] for c in msg["tool_calls"] if "id" in c)
    content = msg["content"]
    if content is None or content == "":
        msg["content"] = ""
    elif not isinstance(content, str):
        bad.append((f"{at}.{ckey}", f"expected a string or null, got {type_name(content)}", "type"))
    elif text_problem := unencodable(content):
        bad.append((f"{at}.{ckey}", text_problem, "unicode"))


def _text_content(m: dict, at: str, ckey: str, bad: Found) -> None:
    """A message without tool calls: its content must be a non-empty, encodable string."""
    content = m.get(ckey)
    if ckey not in m or content is None:
        bad.append((at, "missing", "missing"))
    elif not isinstance(content, str):
        bad.append((at, f"expected a string, got {type_name(content)}", "type"))
    elif not content.strip():
        bad.append((at, "empty", "empty"))
    elif text_problem := unencodable(content):
        bad.append((at, text_problem, "unicode"))


def string(record: dict, key: str) -> str:
    """The record's non-empty string `key`; Bad if it is missing, not a string, blank or not valid Unicode."""
    if key not in record or record[key] is None:
        raise Bad((key, "missing", "missing"))
    v = record[key]
    if not isinstance(v, str):
        raise Bad((key, f"expected a string, got {type_name(v)}", "type"))
    if not v.strip():
        raise Bad((key, "empty", "empty"))
    if msg := unencodable(v):
        raise Bad((key, msg, "unicode"))
    return v


def unencodable(text: str) -> str | None:
    """Why `text` cannot be tokenized (a lone UTF-16 surrogate from a JSON \\uD800 escape), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"contains an unpaired surrogate {text[e.start]!a} at character {e.start} (not valid Unicode)"
    return None


def _prompt_completion(record: dict, tools: Specs | None, deferred: Found) -> list[dict[str, Any]]:
    """The messages of a prompt+completion record (the completion's last turn last)."""
    problems, prompt, completion = [], [], []
    try:
        p = record.get("prompt")
        if isinstance(p, list):
            prompt = _prompt_list(p, tools)
        else:
            prompt = [{"role": "user", "content": string(record, "prompt")}]
    except Bad as e:
        problems += e.items
    try:
        c = record.get("completion")
        if isinstance(c, list):
            ids = {tc["id"] for m in prompt for tc in m.get("tool_calls", ()) if "id" in tc}
            completion = messages(c, "completion", tools=tools, known_ids=ids, deferred=deferred)
        else:
            completion = [{"role": "assistant", "content": string(record, "completion")}]
    except Bad as e:
        problems += e.items
    if problems:
        raise Bad(*problems)
    return prompt + completion


def _prompt_list(p: list, tools: Specs | None) -> list[dict[str, Any]]:
    """Validate a prompt message list (which need not end with an assistant turn)."""
    if not p:
        raise Bad(("prompt", "empty prompt", "empty"))
    try:
        return messages([*p, {"role": "assistant", "content": "x"}], "prompt", tools=tools)[:-1]
    except Bad as e:
        raise Bad(*e.items) from None


def _label(record: dict, warn: Found) -> bool | None:
    """The record's label (None if absent); coerced values add a warning to `warn`."""
    if "label" not in record:
        return None
    v = record["label"]
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        warn.append(("label", f"{v} is not a JSON boolean; read as {str(bool(v)).lower()}", "label_coerced"))
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        b = v.strip().lower() == "true"
        warn.append(("label", f"{v!r} is a string, not a JSON boolean; read as {str(b).lower()}", "label_coerced"))
        return b
    raise Bad(("label", f"expected true or false, got {json.dumps(v)[:40]}", "label"))


@dataclass
class Record:
    """One record's validated content."""

    messages: list[dict[str, Any]]
    label: bool | None
    warnings: Found
    tools: list[dict[str, Any]] | None = None  # the record's own tool schemas


def _format_messages(obj: dict, fmt: str, specs: Specs | None, deferred: Found) -> list[dict[str, Any]]:
    """The messages of a record in format `fmt` (the completion last); Bad listing what is wrong."""
    if fmt in ("kto", "messages", "sharegpt"):
        key = "messages" if fmt == "messages" else "conversations"
        if key not in obj:
            raise Bad((key, "missing", "missing"))
        return messages(obj[key], key, sharegpt=fmt == "sharegpt", tools=specs, deferred=deferred)
    if fmt in ("trl_unpaired", "prompt_completion"):
        return _prompt_completion(obj, specs, deferred)
    return [{"role": "assistant", "content": string(obj, "text")}]


def parse_record(obj: dict, fmt: str, file_tools: Specs | None = None) -> Record:
    """The messages (the completion last), label (None if absent), warnings and own tools of one record
    in format `fmt`; tool calls are checked against the record's tools, else `file_tools`."""
    warn: Found = []
    problems: Found = []
    deferred: Found = []
    msgs: list[dict[str, Any]] = []
    own = None
    if fmt != "text" and obj.get("tools") is not None:
        schemas, bad = tool_schemas(obj["tools"], "tools")
        problems += bad
        own = None if bad else schemas
    specs = toolcalls.specs(own) if own is not None else file_tools
    try:
        msgs = _format_messages(obj, fmt, specs, deferred)
    except Bad as e:
        problems += e.items
    label = None
    try:
        label = _label(obj, warn)
    except Bad as e:
        problems += e.items
    if label is False:  # a wrong call is what an undesirable completion may be about
        warn += [(f, f"{m} (in an undesirable completion)", c) for f, m, c in deferred]
    else:
        problems += deferred
    if problems:
        raise Bad(*problems)
    return Record(msgs, label, warn, own)


def text_prompt(obj: dict, fmt: str) -> str | None:
    """The prompt string of a plain-string prompt/completion record (TRL's non-conversational form), else None."""
    plain = fmt in COMPATIBLE and isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str)
    return obj["prompt"] if plain else None


def example_key(prompt: list[dict[str, Any]], completion: str, tools: list[dict[str, Any]] | None) -> bytes:
    """A digest of an example's prompt, completion and tools: equal for exact duplicates."""
    h = hashlib.blake2b(digest_size=16)
    for m in prompt:
        h.update(m["role"].encode() + b"\x00" + m["content"].encode("utf-8", "surrogatepass") + b"\x01")
        if len(m) > 2:  # tool calls, call ids, tool names
            h.update(json.dumps({k: v for k, v in m.items() if k not in ("role", "content")}, sort_keys=True,
                                ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\x01")
    h.update(b"\x02" + completion.encode("utf-8", "surrogatepass"))
    if tools is not None:
        h.update(b"\x03" + json.dumps(tools, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.digest()
