"""Tool calls in assistant text: parse them, validate them against the dataset's tools.

Formats (one per dataset, detected from its desirable completions by `detect_format`):

- ``json``: the WHOLE assistant text (surrounding whitespace aside) is one JSON object
  ``{"name": "read_note", "arguments": {"path": "a.md"}}`` — the bundled sample data's format.
  Prose before or after the object makes it not a call (reason ``extra_text``).
- ``mistral``: the text starts with ``[TOOL_CALLS]`` followed by a JSON list of such objects
  (``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``; a single object is accepted too).
  Every call in the list is validated; `parse_tool_call` returns the first.
- ``fenced``: a fenced code block (```` ```json ```` or a bare ```` ``` ````) holding such an object
  (or a list of them), anywhere in the text; prose around the block is allowed. The first block
  whose content looks like a call is used.

A call object needs a string ``name`` and an ``arguments`` object (``{}`` for a tool without
arguments), or a JSON string holding one (OpenAI's form); an OpenAI / Hugging Face
``{"type": "function", "function": {...}}`` object is read as its function. Native calls of a
dataset (structured ``tool_calls``) reach this module as their ``mistral`` text (`calls_text`), and
a generated ``[TOOL_CALLS]`` reply becomes structured calls again with `reply_message`. Only JSON is accepted: Python-style single quotes, unquoted keys and trailing commas
are invalid JSON.

Known tools come from a ``tools.json`` beside the dataset (a list of
``{"name", "description", "parameters": {"properties", "required"}}``, or the OpenAI form
``{"type": "function", "function": {...}}``); without one they are inferred from the desirable
completions: every tool name seen, required = the arguments present in every call of that tool,
no argument types.

`check_tool_call` gives a `Validation` with a machine code and a plain-English reason, checked in
this order: ``no_call`` (nothing that looks like a call), ``invalid_json``, ``extra_text``,
``not_a_call`` (JSON, but no string "name"), ``no_arguments`` (no "arguments" object),
``unknown_tool``, ``missing_argument`` (names the argument), ``wrong_type`` (only where the schema
gives a JSON-Schema type: string, integer, number, boolean, array, object, null).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("json", "mistral", "fenced")
MISTRAL_PREFIX = "[TOOL_CALLS]"
TOOLS_FILE = "tools.json"
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.S)
# something that looks like an attempt at a call object (quoted, single-quoted or bare "name" key)
_CALL_HINT = re.compile(r"""\{\s*(?:"name"|'name'|name)\s*:""")


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the tool name, its arguments and the format it was written in."""

    name: str
    arguments: dict[str, Any]
    format: str


@dataclass(frozen=True)
class Validation:
    """The verdict on one text: `ok`, a machine `code` ("ok", "invalid_json", ...), a reason, the calls."""

    ok: bool
    code: str
    reason: str
    calls: tuple[ToolCall, ...] = ()

    @property
    def call(self) -> ToolCall | None:
        return self.calls[0] if self.calls else None


@dataclass(frozen=True)
class ToolSpec:
    """A known tool: its required arguments and (where known) each argument's JSON-Schema type."""

    name: str
    required: tuple[str, ...] = ()
    types: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Toolbox:
    """The tools a dataset knows, where they came from ("tools.json" path or "inferred"), its format."""

    tools: dict[str, ToolSpec]
    source: str
    format: str | None

    @property
    def names(self) -> list[str]:
        return sorted(self.tools)


class _Fail(Exception):
    def __init__(self, code: str, reason: str):
        self.code, self.reason = code, reason


# --- parsing ---------------------------------------------------------------------------------


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Fail("invalid_json", f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise _Fail("invalid_json", "invalid JSON: nested too deeply") from None


def _call(obj: Any, fmt: str) -> ToolCall:
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # the OpenAI / Hugging Face form: {"type": "function", "function": {...}}
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise _Fail("not_a_call", 'JSON is not a tool call (needs an object with a string "name")')
    args = obj.get("arguments")
    if isinstance(args, str):  # arguments as a JSON string (OpenAI's form) holding an object
        try:
            parsed = json.loads(args)
        except (json.JSONDecodeError, RecursionError):
            parsed = None
        args = parsed if isinstance(parsed, dict) else args
    if not isinstance(args, dict):
        what = "no" if "arguments" not in obj else f"a non-object ({type(args).__name__})"
        raise _Fail("no_arguments", f'call to {obj["name"]} has {what} "arguments" object')
    return ToolCall(obj["name"], args, fmt)


def _calls(obj: Any, fmt: str) -> tuple[ToolCall, ...]:
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise _Fail("not_a_call", "empty list of tool calls")
    return tuple(_call(o, fmt) for o in items)


def _parse_json(text: str) -> tuple[ToolCall, ...]:
    s = text.strip()
    if s.startswith("{"):
        try:
            obj, end = json.JSONDecoder().raw_decode(s)
        except json.JSONDecodeError as e:
            raise _Fail("invalid_json", f"invalid JSON: {e.msg} at column {e.colno}") from None
        except RecursionError:
            raise _Fail("invalid_json", "invalid JSON: nested too deeply") from None
        if s[end:].strip():
            _call(obj, "json")  # a broken object is reported as such first
            raise _Fail("extra_text", "text after the tool call JSON (the call must be the whole answer)")
        return (_call(obj, "json"),)
    hint = _CALL_HINT.search(s)
    if not hint:
        raise _Fail("no_call", "no tool call in the text")
    try:
        obj, _ = json.JSONDecoder().raw_decode(s[hint.start():])
    except (json.JSONDecodeError, RecursionError):
        raise _Fail("invalid_json", "invalid JSON in a tool call surrounded by other text") from None
    _call(obj, "json")
    raise _Fail("extra_text", "text before the tool call JSON (the call must be the whole answer)")


def _parse_mistral(text: str) -> tuple[ToolCall, ...]:
    s = text.strip()
    if not s.startswith(MISTRAL_PREFIX):
        if MISTRAL_PREFIX in s:
            raise _Fail("extra_text", f"text before {MISTRAL_PREFIX} (the call must start the answer)")
        raise _Fail("no_call", f"no {MISTRAL_PREFIX} tool call in the text")
    return _calls(_loads(s[len(MISTRAL_PREFIX):].strip()), "mistral")


def _parse_fenced(text: str) -> tuple[ToolCall, ...]:
    first_error: _Fail | None = None
    for m in _FENCE.finditer(text):
        lang, body = m.group(1).lower(), m.group(2).strip()
        if lang not in ("", "json", "tool_call", "tool_code") or not body.startswith(("{", "[")):
            continue
        try:
            return _calls(_loads(body), "fenced")
        except _Fail as e:
            first_error = first_error or e
    if first_error:
        raise first_error
    raise _Fail("no_call", "no fenced ```json tool call in the text")


_PARSERS = {"json": _parse_json, "mistral": _parse_mistral, "fenced": _parse_fenced}


def _looks_like(text: str) -> str | None:
    """The format a text seems to be written in (for auto-detection), or None."""
    s = text.strip()
    if s.startswith(MISTRAL_PREFIX):
        return "mistral"
    if s.startswith("{"):
        return "json"
    if "```" in s and _FENCE.search(s):
        return "fenced"
    return None


def _parse(text: str, fmt: str | None) -> tuple[ToolCall, ...]:
    if fmt is None:
        fmt = _looks_like(text) or "json"
    if fmt not in _PARSERS:
        raise ValueError(f"unknown tool-call format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _PARSERS[fmt](text)


def parse_tool_calls(text: str, format: str | None = None) -> tuple[ToolCall, ...]:
    """Every call in `text` (in `format`, or the format it looks like); () if none parses."""
    try:
        return _parse(text, format)
    except _Fail:
        return ()


def parse_tool_call(text: str, format: str | None = None) -> ToolCall | None:
    """The (first) tool call in `text`, or None: no call, invalid JSON, or not a call object."""
    calls = parse_tool_calls(text, format)
    return calls[0] if calls else None


# --- validation ------------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object", type(None): "null"}


def _type_ok(value: Any, expected: Any) -> bool:
    names = expected if isinstance(expected, list) else [expected]
    known = [n for n in names if n in _TYPES]
    if not known:
        return True  # no (usable) type information
    for n in known:
        if isinstance(value, bool) and n in ("integer", "number"):
            continue
        if isinstance(value, _TYPES[n]):
            return True
    return False


def call_problems(name: str, arguments: Mapping[str, Any], tools: Mapping[str, ToolSpec]) -> list[tuple[str, str, str]]:
    """Everything wrong with one call against the known tools, as (where, reason, code): where is
    "name", "arguments" or "arguments.<arg>"."""
    spec = tools.get(name)
    if spec is None:
        return [("name", f"unknown tool {name!r} (known: {', '.join(sorted(tools)) or 'none'})", "unknown_tool")]
    out = [("arguments", f"call to {name} is missing required argument {arg!r}", "missing_argument")
           for arg in spec.required if arg not in arguments]
    for arg, value in arguments.items():
        expected = spec.types.get(arg)
        if expected is not None and not _type_ok(value, expected):
            want = " or ".join(expected) if isinstance(expected, list) else expected
            got = _JSON_NAMES.get(type(value), type(value).__name__)
            out.append((f"arguments.{arg}", f"argument {arg!r} of {name} should be {want}, got {got}", "wrong_type"))
    return out


def _check_call(call: ToolCall, box: Toolbox | None) -> None:
    if box is not None and (found := call_problems(call.name, call.arguments, box.tools)):
        raise _Fail(found[0][2], found[0][1])


def check_tool_call(text: str, tools: Toolbox | None = None, format: str | None = None) -> Validation:
    """Is `text` a well-formed tool call: valid JSON in the format, a known tool, required args present?

    `format` defaults to `tools.format`, then to whatever the text looks like. Without `tools` only
    the syntax is checked.
    """
    fmt = format or (tools.format if tools else None)
    try:
        calls = _parse(text, fmt)
        for c in calls:
            _check_call(c, tools)
    except _Fail as e:
        return Validation(False, e.code, e.reason, parse_tool_calls(text, fmt))
    return Validation(True, "ok", "well-formed tool call", calls)


# --- the dataset's tools and format ----------------------------------------------------------


def detect_format(completions: Iterable[str]) -> str | None:
    """The tool-call format of most completions that parse as a call in some format; None if none do."""
    counts = dict.fromkeys(FORMATS, 0)
    for text in completions:
        for fmt in FORMATS:
            if parse_tool_calls(text, fmt):
                counts[fmt] += 1
                break
    best = max(FORMATS, key=lambda f: counts[f])
    return best if counts[best] else None


def load_tools(path: str | Path) -> dict[str, ToolSpec]:
    """Tool specs from a tools.json (list of {"name","parameters":{"properties","required"}})."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read tool schemas: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("tools"), list):
        raw = raw["tools"]
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON list of tool schemas")
    for i, item in enumerate(raw):
        fn = item["function"] if isinstance(item, dict) and isinstance(item.get("function"), dict) else item
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"{path}: item {i} has no string \"name\"")
    return specs(raw)


def specs(schemas: Iterable[Mapping[str, Any]]) -> dict[str, ToolSpec]:
    """ToolSpecs from JSON-schema function definitions (bare or in the OpenAI {"type", "function"} form)."""
    out: dict[str, ToolSpec] = {}
    for item in schemas:
        fn = item["function"] if isinstance(item.get("function"), dict) else item
        params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
        props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
        required = params.get("required") if isinstance(params.get("required"), list) else []
        types = {k: v.get("type") for k, v in props.items() if isinstance(v, dict) and v.get("type")}
        out[fn["name"]] = ToolSpec(fn["name"], tuple(str(r) for r in required), types)
    return out


def reply_message(text: str) -> dict[str, Any]:
    """A generated reply as the assistant message to keep in a chat history: a ``[TOOL_CALLS]`` reply
    that parses becomes structured tool calls (so the next turn renders it natively), anything else text."""
    calls = parse_tool_calls(text, "mistral") if text.lstrip().startswith(MISTRAL_PREFIX) else ()
    if not calls:
        return {"role": "assistant", "content": text}
    ids = re.findall(r'"id":\s*"([A-Za-z0-9]{1,64})"', text)
    out = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    for c, cid in zip(out, ids if len(ids) == len(out) else []):
        c["id"] = cid
    return {"role": "assistant", "content": "", "tool_calls": out}


def describe_calls(text: str, tools: Mapping[str, ToolSpec] | None) -> list[str] | None:
    """One line per call of a ``[TOOL_CALLS]`` reply — name, arguments, and whether the schema accepts it —
    or None when the reply is not a native call."""
    if not text.lstrip().startswith(MISTRAL_PREFIX):
        return None
    try:
        calls = _parse_mistral(text)
    except _Fail as e:
        return [f"tool call, not readable: {e.reason}"]
    lines = []
    for c in calls:
        found = call_problems(c.name, c.arguments, tools) if tools is not None else []
        verdict = "valid" if tools is not None and not found else ("; ".join(r for _, r, _ in found) or "no schema")
        lines.append(f"tool call {c.name}({json.dumps(c.arguments, ensure_ascii=False)}) — {verdict}")
    return lines


def calls_text(calls: Iterable[Mapping[str, Any]]) -> str:
    """Structured (OpenAI-form) calls as text in the ``mistral`` format: ``[TOOL_CALLS] [{"name", "arguments"}]``."""
    plain = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
    return f"{MISTRAL_PREFIX} {json.dumps(plain, ensure_ascii=False)}"


def infer_tools(completions: Iterable[str], format: str | None) -> dict[str, ToolSpec]:
    """Tools seen in (desirable) completions: required = the arguments present in every call."""
    seen: dict[str, set[str]] = {}
    for text in completions:
        for call in parse_tool_calls(text, format):
            keys = set(call.arguments)
            seen[call.name] = seen[call.name] & keys if call.name in seen else keys
    return {name: ToolSpec(name, tuple(sorted(req))) for name, req in sorted(seen.items())}


def toolbox(desirable_completions: list[str], dataset_path: str | Path | None = None,
            schemas: list[dict[str, Any]] | None = None, schemas_source: str = "") -> Toolbox:
    """The dataset's format (detected) and tools: `schemas` (the tools a native-format dataset
    carries), else tools.json beside the dataset, else inferred from the completions."""
    fmt = detect_format(desirable_completions)
    if schemas:
        return Toolbox(specs(schemas), schemas_source or "the dataset's tools", fmt)
    if dataset_path is not None:
        path = Path(dataset_path).parent / TOOLS_FILE
        if path.is_file():
            return Toolbox(load_tools(path), str(path), fmt)
    return Toolbox(infer_tools(desirable_completions, fmt), "inferred", fmt)
