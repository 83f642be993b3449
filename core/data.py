"""Read and validate chat datasets (JSONL, or a .json list), compute stats, split, KTO weights.

Formats (auto-detected from the first valid records of a file; `format=` forces one):

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
assistant turn with ``tool_calls``; other keys of a message and of a record are ignored, but these.

Native tool calling (OpenAI / Hugging Face form): an assistant message may carry ``tool_calls``
(``[{"id"?, "type": "function", "function": {"name", "arguments"}}]``, or bare ``{"name",
"arguments"}``; arguments an object or a JSON string holding one; content null or ""), normalised to
arguments objects; a ``tool`` message may carry ``tool_call_id`` (an earlier call's id) and ``name``.
Tool schemas (JSON-schema function definitions, bare or ``{"type": "function", "function"}``) come
per record (``tools``), else from the file's: ``load(tools=)`` (config ``data.tools``) or a
``tools.json`` beside the dataset; a file with any native call renders them with every example
(`Example.tools`). Calls are checked against the schemas: unknown tool, missing required argument,
wrong type (errors; warnings in an undesirable example's completion), and arguments that are not JSON.
The content-embedded form (the call JSON as the assistant's text) is read as before, without tools.

Labels: ``true``/``false``. ``1``/``0`` and the strings ``"true"``/``"false"`` (any case) are read
as the boolean with a warning; anything else (including null) is an error. A missing label means
desirable; in a file where other lines carry labels that gets a warning.

Problems are collected, never just the first: each has the path, 1-based line, field (e.g.
``conversations[2].role``) and a plain-English reason. Errors: invalid JSON (with column; also a
key repeated in one object, an integer over Python's 4,300-digit limit, and CR-only line endings,
named as such), a line that is not an object, missing/empty/mistyped fields, unknown roles, no final
assistant turn, invalid UTF-8 (with byte offsets), NUL bytes, lines over 1 MB (not parsed), a line in
another format than the file's. Warnings: a UTF-8 BOM, coerced labels, exact duplicates (the first
is kept, later ones set aside) and identical examples with conflicting labels (both kept). CRLF and
blank lines are accepted silently. JSONL is streamed; a .json list is parsed whole. A FIFO, socket
or device is refused without reading from it; a file's size is not trusted (/proc files report 0
and are read).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import toolcalls
from .fsutil import NotRegularFile, open_regular

FORMATS = ("kto", "messages", "trl_unpaired", "sharegpt", "prompt_completion", "text")
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
MAX_LINE_BYTES = 1 << 20
DETECT_RECORDS = 20
BOM = b"\xef\xbb\xbf"
KTO_RATIO_RANGE = (1.0, 4 / 3)
_COMPATIBLE = {"trl_unpaired": "prompt_completion", "prompt_completion": "trl_unpaired"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing) about one line of a dataset file."""

    path: str
    line: int
    field: str
    message: str
    severity: str = "error"  # "error" | "warning"
    code: str = ""  # machine-readable kind, e.g. "json", "duplicate", "label_coerced"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}: "
        return where + (f"{self.field}: {self.message}" if self.field else self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message, "code": self.code}


@dataclass(slots=True)
class Example:
    """One training example: prompt messages, the final assistant completion, and its label.

    A completion that makes structured tool calls keeps its message in `final` (`completion` is then
    its text form, ``[TOOL_CALLS] [...]``); `tools` are the tool schemas rendered with it (native form).
    """

    prompt: list[dict[str, Any]]
    completion: str
    label: bool
    line: int
    raw: str
    final: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    text_prompt: str | None = None  # the prompt of a plain-string {prompt, completion} record, as written

    @property
    def answer(self) -> dict[str, Any]:
        """The final assistant message."""
        return self.final or {"role": "assistant", "content": self.completion}

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [*self.prompt, self.answer]

    @property
    def native(self) -> bool:
        """Whether the example uses native tool calling (structured calls, or its own tool schemas)."""
        return self.tools is not None or any("tool_calls" in m for m in self.messages)

    @property
    def turns(self) -> int:
        return len(self.prompt) + 1


@dataclass
class Dataset:
    """A loaded file: kept examples, every problem found, lines set aside, and the bytes' sha256.

    `format` is "unknown" when no record had a recognisable format.
    """

    path: Path
    format: str
    examples: list[Example]
    problems: list[Problem]
    skipped: int
    sha256: str
    tools: list[dict[str, Any]] | None = None  # the file's tool schemas (tools.json or data.tools), if any
    tools_source: str = ""

    @property
    def native(self) -> bool:
        """Whether any example uses native tool calling (then the file's tools are rendered with each)."""
        return any(e.native for e in self.examples)

    @property
    def desirable(self) -> int:
        return sum(1 for e in self.examples if e.label)

    @property
    def undesirable(self) -> int:
        return len(self.examples) - self.desirable

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


class DataError(Exception):
    """A dataset could not be loaded; `problems` lists everything found, `str()` one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Bad(Exception):
    """Internal: one line's validation problems."""

    def __init__(self, *problems: tuple[str, str, str]):
        self.items = problems  # (field, message, code)


# ---------------------------------------------------------------- reading lines


@dataclass(slots=True)
class _Line:
    line: int
    raw: str = ""
    obj: Any = None
    problem: tuple[str, str] | None = None  # (message, code) when the line is unusable


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number"}.get(type(v), type(v).__name__)


class _DupDict(dict):
    """A JSON object that repeated a key (JSON would keep only the last value); `key` is the key."""

    key: str


def _json_loads(text: str) -> tuple[Any, list[str]]:
    """json.loads, and the keys that some object repeated (each such object is a _DupDict)."""
    repeated: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        counts = Counter(k for k, _ in pairs)
        dup = _DupDict(obj)
        dup.key = next(k for k, _ in pairs if counts[k] > 1)
        repeated.append(dup.key)
        return dup

    return json.loads(text, object_pairs_hook=pairs_hook), repeated


def _duplicate_key(value: Any) -> str | None:
    """A key repeated inside some object of `value` (walked without recursion), or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _DupDict):
            return v.key
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _duplicate_problem(key: str) -> tuple[str, str]:
    msg = f"invalid JSON: duplicate key \"{_shown(key)}\" in one object (only the last value would count)"
    return msg, "duplicate_key"


def _long_number(text: str) -> tuple[str, int]:
    """Why json.loads raised a plain ValueError (an integer past Python's int-string digit limit), and
    the line of `text` where that number is."""
    limit = sys.get_int_max_str_digits()
    m = re.search(r"\d{%d,}" % (limit + 1), text) if limit else None
    if m is None:
        return "invalid JSON: a number too long to read", 1
    col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
    msg = f"invalid JSON: a number of {m.end() - m.start():,} digits at column {col} (at most {limit:,} are read)"
    return msg, text.count("\n", 0, m.start()) + 1


def _cr_hint(data: bytes) -> str:
    """A note for a line that holds a bare carriage return: the file's lines end with CR alone."""
    return "; the file uses CR (carriage return) line endings: save it with LF line endings" if b"\r" in data else ""


def _parse_text(line: int, data: bytes, offset: int) -> _Line:
    """Decode and parse one JSONL line (terminator already removed)."""
    if b"\x00" in data:
        return _Line(line, problem=(f"contains a NUL byte at byte {data.index(0)} (binary data?)", "nul"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"invalid UTF-8 at byte {e.start} of the line (file offset {offset + e.start})"
        return _Line(line, problem=(msg, "utf8"))
    try:
        obj, repeated = _json_loads(text)
    except json.JSONDecodeError as e:
        code = "cr_endings" if b"\r" in data else "json"
        return _Line(line, text, problem=(f"invalid JSON: {e.msg} at column {e.colno}{_cr_hint(data)}", code))
    except RecursionError:
        return _Line(line, problem=("invalid JSON: nested too deeply to parse", "json"))
    except ValueError:
        return _Line(line, text, problem=(_long_number(text)[0], "json"))
    if repeated:
        return _Line(line, text, problem=_duplicate_problem(repeated[0]))
    if not isinstance(obj, dict):
        return _Line(line, text, problem=(f"expected a JSON object, got {_type_name(obj)}", "not_object"))
    return _Line(line, text, obj)


def _read_jsonl(f, hasher, bom_warning: list[Problem], path: str) -> Iterator[_Line]:
    """Yield each non-blank line of a binary file, hashing every byte read.

    A line over MAX_LINE_BYTES is drained in chunks and reported, never held in memory whole.
    """
    limit = MAX_LINE_BYTES + 2  # content plus CRLF
    offset, line = 0, 0
    while chunk := f.readline(limit):
        line += 1
        hasher.update(chunk)
        start, size = offset, len(chunk)
        drained = not chunk.endswith(b"\n") and len(chunk) == limit
        while drained and (more := f.readline(1 << 16)):
            hasher.update(more)
            size += len(more)
            if more.endswith(b"\n"):
                break
        offset += size
        data = chunk[:-1] if chunk.endswith(b"\n") else chunk
        data = data[:-1] if data.endswith(b"\r") else data
        if drained or len(data) > MAX_LINE_BYTES:
            msg = f"line is {size:,} bytes, over the 1 MB limit; not parsed{_cr_hint(data)}"
            yield _Line(line, problem=(msg, "cr_endings" if b"\r" in data else "too_long"))
            continue
        if line == 1 and data.startswith(BOM):
            data, start = data[3:], start + 3
            bom_warning.append(_bom_problem(path))
        if data.strip():
            yield _parse_text(line, data, start)


def _bom_problem(path: str) -> Problem:
    return Problem(path, 1, "", "file starts with a UTF-8 byte-order mark (BOM); ignored", "warning", "bom")


def _read_json_list(data: bytes, path: str, bom_warning: list[Problem]) -> Iterator[_Line]:
    """Yield the items of a .json file holding a list (line = list index + 1)."""
    if data.startswith(BOM):
        data = data[3:]
        bom_warning.append(_bom_problem(path))
    try:
        text = data.decode("utf-8")
        items, repeated = _json_loads(text)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _file_error(path, f"invalid UTF-8 at file offset {e.start}", line, "utf8") from None
    except json.JSONDecodeError as e:
        raise _file_error(path, f"invalid JSON: {e.msg} at column {e.colno}", e.lineno, "json") from None
    except RecursionError:
        raise _file_error(path, "invalid JSON: nested too deeply to parse", 0, "json") from None
    except ValueError:
        raise _file_error(path, *_long_number(text), "json") from None
    for i, obj in enumerate(items):
        raw = json.dumps(obj, ensure_ascii=False)
        if repeated and (key := _duplicate_key(obj)) is not None:
            yield _Line(i + 1, raw, problem=_duplicate_problem(key))
        elif isinstance(obj, dict):
            yield _Line(i + 1, raw, obj)
        else:
            yield _Line(i + 1, raw, problem=(f"expected a JSON object, got {_type_name(obj)}", "not_object"))


# ---------------------------------------------------------------- formats and validation


def detect_format(record: dict) -> str | None:
    """The format one record looks like, or None."""
    conv = record.get("conversations")
    if isinstance(conv, list):
        first = next((m for m in conv if isinstance(m, dict)), {})
        return "sharegpt" if "from" in first or "value" in first else "kto"
    if "messages" in record:
        return "messages"
    if "prompt" in record and "completion" in record:
        return "trl_unpaired" if "label" in record else "prompt_completion"
    if "text" in record:
        return "text"
    if "conversations" in record:
        return "kto"
    return None


def _choose_format(lines: list[_Line]) -> str | None:
    """Most common format among the first valid records (trl_unpaired wins over unlabeled)."""
    counts = Counter(f for f in (detect_format(x.obj) for x in lines if x.obj is not None) if f)
    if not counts:
        return None
    if counts["trl_unpaired"] and counts["prompt_completion"]:
        counts["trl_unpaired"] += counts.pop("prompt_completion")
    return counts.most_common(1)[0][0]


def _messages(value: Any, fld: str, sharegpt: bool = False, tools: dict[str, toolcalls.ToolSpec] | None = None,
              known_ids: set[str] | None = None, deferred: list | None = None) -> list[dict[str, Any]]:
    """Validate a message list (structured tool calls checked against `tools`, where known); raise
    _Bad listing every problem in it. The last message's schema problems (unknown tool, missing
    argument, wrong type) go to `deferred` when given: an undesirable example may show a wrong call."""
    if not isinstance(value, list):
        raise _Bad((fld, f"expected a list of messages, got {_type_name(value)}", "type"))
    if not value:
        raise _Bad((fld, "empty conversation", "empty"))
    rkey, ckey = ("from", "value") if sharegpt else ("role", "content")
    out, bad, call_ids = [], [], set(known_ids or ())
    for i, m in enumerate(value):
        at = f"{fld}[{i}]"
        if not isinstance(m, dict):
            bad.append((at, f"expected an object with {rkey!r} and {ckey!r}, got {_type_name(m)}", "type"))
            continue
        role, content = m.get(rkey), m.get(ckey)
        if rkey not in m:
            bad.append((f"{at}.{rkey}", "missing", "missing"))
        elif not isinstance(role, str):
            bad.append((f"{at}.{rkey}", f"expected a string, got {_type_name(role)}", "type"))
        elif (SHAREGPT_ROLES.get(role) if sharegpt else role if role in ROLES else None) is None:
            known = ", ".join(SHAREGPT_ROLES if sharegpt else ROLES)
            bad.append((f"{at}.{rkey}", f"unknown role {role!r} (expected one of {known})", "role"))
        else:
            role = SHAREGPT_ROLES[role] if sharegpt else role
        msg: dict[str, Any] = {"role": role, "content": content}
        calls = None if sharegpt else m.get("tool_calls")
        if calls is not None and calls != []:
            if role != "assistant":
                bad.append((f"{at}.tool_calls", f"only assistant messages make tool calls, not {role!r}", "tool_calls"))
            else:
                last = deferred is not None and i == len(value) - 1
                msg["tool_calls"] = _tool_calls(calls, f"{at}.tool_calls", tools, bad, deferred if last else bad)
                call_ids.update(c["id"] for c in msg["tool_calls"] if "id" in c)
            if content is None or content == "":
                msg["content"] = ""
            elif not isinstance(content, str):
                bad.append((f"{at}.{ckey}", f"expected a string or null, got {_type_name(content)}", "type"))
            elif text_problem := _unencodable(content):
                bad.append((f"{at}.{ckey}", text_problem, "unicode"))
        elif ckey not in m or content is None:
            bad.append((f"{at}.{ckey}", "missing", "missing"))
        elif not isinstance(content, str):
            bad.append((f"{at}.{ckey}", f"expected a string, got {_type_name(content)}", "type"))
        elif not content.strip():
            bad.append((f"{at}.{ckey}", "empty", "empty"))
        elif text_problem := _unencodable(content):
            bad.append((f"{at}.{ckey}", text_problem, "unicode"))
        if role == "tool" and not sharegpt:
            _tool_result(m, at, call_ids, msg, bad)
        out.append(msg)
    if bad:
        raise _Bad(*bad)
    if out[-1]["role"] != "assistant":
        last = f"{fld}[{len(out) - 1}].{rkey}"
        msg = f"conversation must end with an assistant turn, not {out[-1]['role']!r}"
        raise _Bad((last, msg, "no_assistant"))
    return out


def _tool_result(m: dict, at: str, call_ids: set[str], msg: dict[str, Any], bad: list) -> None:
    """Copy a tool message's `tool_call_id` and `name` into `msg`; the id must be an earlier call's."""
    for key in ("tool_call_id", "name"):
        v = m.get(key)
        if v is None:
            continue
        if not isinstance(v, str) or not v:
            bad.append((f"{at}.{key}", f"expected a non-empty string, got {_type_name(v)}", "type"))
        elif key == "tool_call_id" and v not in call_ids:
            bad.append((f"{at}.{key}", f"{_shown(v)!r} is not the id of an earlier tool call", "tool_call_id"))
        else:
            msg[key] = v


def _tool_calls(value: Any, fld: str, tools: dict[str, toolcalls.ToolSpec] | None, bad: list,
                schema_bad: list) -> list[dict[str, Any]]:
    """Structured tool calls (OpenAI / Hugging Face form, or bare {"name", "arguments"}), normalised to
    ``{"type": "function", "function": {"name", "arguments": {...}}, "id"?}``; problems go to `bad`,
    those against the tools' schemas to `schema_bad`."""
    if not isinstance(value, list):
        bad.append((fld, f"expected a list of tool calls, got {_type_name(value)}", "type"))
        return []
    out = []
    for j, c in enumerate(value):
        at = f"{fld}[{j}]"
        if not isinstance(c, dict):
            bad.append((at, f"expected an object with \"function\", got {_type_name(c)}", "type"))
            continue
        fn, fat = (c.get("function"), f"{at}.function") if "function" in c else (c, at)
        if not isinstance(fn, dict):
            bad.append((fat, f"expected an object with \"name\" and \"arguments\", got {_type_name(fn)}", "type"))
            continue
        if c.get("type", "function") != "function":
            bad.append((f"{at}.type", f"expected \"function\", got {json.dumps(c.get('type'))[:40]}", "tool_calls"))
        call: dict[str, Any] = {"type": "function", "function": {}}
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            bad.append((f"{fat}.name", "missing" if name is None else f"expected a tool name, got {_type_name(name)}",
                        "missing" if name is None else "type"))
        args = _arguments(fn, f"{fat}.arguments", bad)
        if isinstance(name, str) and name.strip() and args is not None:
            for where, reason, code in toolcalls.call_problems(name, args, tools) if tools is not None else ():
                schema_bad.append((f"{fat}.{where}", reason, code))
        call["function"] = {"name": name, "arguments": args}
        if c.get("id") is not None:
            if isinstance(c["id"], str) and c["id"]:
                call["id"] = c["id"]
            else:
                bad.append((f"{at}.id", f"expected a non-empty string, got {_type_name(c['id'])}", "type"))
        out.append(call)
    return out


def _arguments(fn: dict, fld: str, bad: list) -> dict[str, Any] | None:
    """A call's arguments as an object (given as one, or as a JSON string holding one), or None."""
    args = fn.get("arguments")
    if args is None:
        bad.append((fld, "missing (use {} for a tool without arguments)", "missing"))
        return None
    if isinstance(args, str):
        try:
            args, repeated = _json_loads(args)
        except json.JSONDecodeError as e:
            bad.append((fld, f"not JSON: {e.msg} at column {e.colno}", "arguments_json"))
            return None
        except (RecursionError, ValueError):
            bad.append((fld, "not JSON that can be read (nested too deeply, or a number too long)", "arguments_json"))
            return None
        if repeated:
            bad.append((fld, f"JSON repeats the key \"{_shown(repeated[0])}\"", "duplicate_key"))
            return None
    if not isinstance(args, dict):
        bad.append((fld, f"expected a JSON object of arguments, got {_type_name(args)}", "type"))
        return None
    return args


def _tool_schemas(value: Any, fld: str) -> list[dict[str, Any]]:
    """Validate a list of tool schemas (JSON-schema function definitions, bare or in the OpenAI
    ``{"type": "function", "function": {...}}`` form), normalised to the OpenAI form with
    name, description (default "") and parameters; raise _Bad listing every problem."""
    if not isinstance(value, list):
        raise _Bad((fld, f"expected a list of tool schemas, got {_type_name(value)}", "type"))
    out, bad, names = [], [], set()
    for i, item in enumerate(value):
        at = f"{fld}[{i}]"
        if not isinstance(item, dict):
            bad.append((at, f"expected a tool schema object, got {_type_name(item)}", "type"))
            continue
        fn, fat = (item.get("function"), f"{at}.function") if "function" in item else (item, at)
        if not isinstance(fn, dict):
            bad.append((fat, f"expected an object, got {_type_name(fn)}", "type"))
            continue
        name, desc = fn.get("name"), fn.get("description", "")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not name.strip():
            bad.append((f"{fat}.name", "missing" if name is None else f"expected a string, got {_type_name(name)}",
                        "missing" if name is None else "type"))
        elif name in names:
            bad.append((f"{fat}.name", f"tool {_shown(name)!r} is defined twice", "duplicate_tool"))
        names.add(name)
        if not isinstance(desc, str):
            bad.append((f"{fat}.description", f"expected a string, got {_type_name(desc)}", "type"))
        bad += _parameters_problems(params, f"{fat}.parameters")
        out.append({"type": "function", "function": {"name": name, "description": desc, "parameters": params}})
    if bad:
        raise _Bad(*bad)
    return out


def _parameters_problems(params: Any, fld: str) -> list[tuple[str, str, str]]:
    if not isinstance(params, dict):
        return [(fld, f"expected a JSON-schema object, got {_type_name(params)}", "type")]
    out = []
    props, required = params.get("properties", {}), params.get("required", [])
    if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
        out.append((f"{fld}.properties", "expected an object mapping each argument to its schema", "type"))
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        out.append((f"{fld}.required", "expected a list of argument names", "type"))
    return out


def load_tools(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Tool schemas from a JSON file (a list, or {"tools": [...]}), normalised; DataError naming the file."""
    path = Path(path)
    if msg := _open_problem(path):
        raise _file_error(str(path), msg)
    try:
        with os.fdopen(open_regular(os.path.realpath(path)), "rb") as f:
            data = f.read(MAX_LINE_BYTES * 16 + 1)
    except NotRegularFile:
        raise _file_error(str(path), _NOT_REGULAR) from None
    except OSError as e:
        raise _file_error(str(path), f"cannot be read: {e.strerror or e}") from None
    lines = list(_read_json_list(data, str(path), [])) if data.lstrip(BOM + b" \t\r\n").startswith(b"[") else None
    if lines is None:
        try:
            obj, _ = _json_loads(data.removeprefix(BOM).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
            raise _file_error(str(path), f"invalid JSON: {getattr(e, 'msg', e)}", 0, "json") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("tools"), list):
            raise _file_error(str(path), "expected a JSON list of tool schemas (or an object with a \"tools\" list)")
        items = obj["tools"]
    else:
        bad = [ln for ln in lines if ln.problem]
        if bad:
            raise DataError([Problem(str(path), 0, f"[{ln.line - 1}]", ln.problem[0], code=ln.problem[1]) for ln in bad])
        items = [ln.obj for ln in lines]
    try:
        return _tool_schemas(items, "")
    except _Bad as e:
        raise DataError([Problem(str(path), 0, fld.lstrip("."), msg, code=code) for fld, msg, code in e.items]) from None


def _string(record: dict, key: str) -> str:
    if key not in record or record[key] is None:
        raise _Bad((key, "missing", "missing"))
    v = record[key]
    if not isinstance(v, str):
        raise _Bad((key, f"expected a string, got {_type_name(v)}", "type"))
    if not v.strip():
        raise _Bad((key, "empty", "empty"))
    if msg := _unencodable(v):
        raise _Bad((key, msg, "unicode"))
    return v


def _unencodable(text: str) -> str | None:
    """Why `text` cannot be tokenized (a lone UTF-16 surrogate from a JSON \\uD800 escape), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"contains an unpaired surrogate {text[e.start]!a} at character {e.start} (not valid Unicode)"
    return None


def _shown(key: str, limit: int = 40) -> str:
    """A record key as printed in a message: control/bidi characters escaped, long keys cut."""
    shown = key if key.isprintable() else repr(key)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _prompt_completion(record: dict, tools: dict[str, toolcalls.ToolSpec] | None, deferred: list) -> list[dict[str, Any]]:
    """The messages of a prompt+completion record (the completion's last turn last)."""
    problems, prompt, completion = [], [], []
    try:
        p = record.get("prompt")
        if isinstance(p, list):
            prompt = _prompt_list(p, tools)
        else:
            prompt = [{"role": "user", "content": _string(record, "prompt")}]
    except _Bad as e:
        problems += e.items
    try:
        c = record.get("completion")
        if isinstance(c, list):
            ids = {tc["id"] for m in prompt for tc in m.get("tool_calls", ()) if "id" in tc}
            completion = _messages(c, "completion", tools=tools, known_ids=ids, deferred=deferred)
        else:
            completion = [{"role": "assistant", "content": _string(record, "completion")}]
    except _Bad as e:
        problems += e.items
    if problems:
        raise _Bad(*problems)
    return prompt + completion


def _prompt_list(p: list, tools: dict[str, toolcalls.ToolSpec] | None) -> list[dict[str, Any]]:
    """Validate a prompt message list (which need not end with an assistant turn)."""
    if not p:
        raise _Bad(("prompt", "empty prompt", "empty"))
    try:
        return _messages([*p, {"role": "assistant", "content": "x"}], "prompt", tools=tools)[:-1]
    except _Bad as e:
        raise _Bad(*e.items) from None


def _label(record: dict, warn: list[tuple[str, str, str]]) -> bool | None:
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
    raise _Bad(("label", f"expected true or false, got {json.dumps(v)[:40]}", "label"))


@dataclass
class _Record:
    """One record's validated content."""

    messages: list[dict[str, Any]]
    label: bool | None
    warnings: list[tuple[str, str, str]]
    tools: list[dict[str, Any]] | None = None  # the record's own tool schemas


def _parse_record(obj: dict, fmt: str, file_tools: dict[str, toolcalls.ToolSpec] | None = None) -> _Record:
    """The messages (the completion last), label (None if absent), warnings and own tools of one record
    in format `fmt`; tool calls are checked against the record's tools, else `file_tools`."""
    warn: list[tuple[str, str, str]] = []
    problems: list[tuple[str, str, str]] = []
    deferred: list[tuple[str, str, str]] = []
    msgs: list[dict[str, Any]] = []
    own = None
    if fmt != "text" and obj.get("tools") is not None:
        try:
            own = _tool_schemas(obj["tools"], "tools")
        except _Bad as e:
            problems += e.items
    specs = toolcalls.specs(own) if own is not None else file_tools
    try:
        if fmt in ("kto", "messages", "sharegpt"):
            key = "messages" if fmt == "messages" else "conversations"
            if key not in obj:
                raise _Bad((key, "missing", "missing"))
            msgs = _messages(obj[key], key, sharegpt=fmt == "sharegpt", tools=specs, deferred=deferred)
        elif fmt in ("trl_unpaired", "prompt_completion"):
            msgs = _prompt_completion(obj, specs, deferred)
        else:
            msgs = [{"role": "assistant", "content": _string(obj, "text")}]
    except _Bad as e:
        problems += e.items
    label = None
    try:
        label = _label(obj, warn)
    except _Bad as e:
        problems += e.items
    if label is False:  # a wrong call is what an undesirable completion may be about
        warn += [(f, f"{m} (in an undesirable completion)", c) for f, m, c in deferred]
    else:
        problems += deferred
    if problems:
        raise _Bad(*problems)
    return _Record(msgs, label, warn, own)


def completion_text(message: dict[str, Any]) -> str:
    """The text form of an assistant message: its content, or its tool calls as ``[TOOL_CALLS] [...]``."""
    if message.get("tool_calls"):
        return toolcalls.calls_text(message["tool_calls"])
    return message["content"]


# ---------------------------------------------------------------- load


def _file_error(path: str, message: str, line: int = 0, code: str = "file") -> DataError:
    return DataError([Problem(path, line, "", message, code=code)])


_NOT_REGULAR = "is not a regular file (a FIFO, socket or device); expected a dataset file"


def _open_problem(path: Path) -> str | None:
    if not path.exists():
        return "file not found"
    if path.is_dir():
        return "is a directory, not a dataset file"
    if not path.is_file():
        return _NOT_REGULAR
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _source(path: Path, f, hasher, bom: list[Problem]) -> Iterator[_Line]:
    """The lines of an open file. Its size is not trusted: /proc files say 0 and still hold text."""
    head = f.read(64)
    if not head:
        raise _file_error(str(path), "file is empty")
    f.seek(0)
    if path.suffix.lower() == ".json" and head.lstrip(BOM + b" \t\r\n").startswith(b"["):
        data = f.read()
        hasher.update(data)
        return _read_json_list(data, str(path), bom)
    return _read_jsonl(f, hasher, bom, str(path))


def _text_prompt(obj: dict, fmt: str) -> str | None:
    """The prompt string of a plain-string prompt/completion record (TRL's non-conversational form), else None."""
    plain = fmt in _COMPATIBLE and isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str)
    return obj["prompt"] if plain else None


class _Loader:
    """Turns lines into examples and problems for one file (state of one `load` call)."""

    def __init__(self, path: str, fmt: str | None, forced: bool,
                 tools: tuple[list[dict[str, Any]] | None, str, list[Problem]] = (None, "", [])):
        self.path, self.fmt, self.forced = path, fmt, forced
        self.tools, self.tools_source, self.tools_problems = tools
        self.specs = toolcalls.specs(self.tools) if self.tools is not None else None
        self.examples: list[Example] = []
        self.problems: list[Problem] = []
        self.skipped = 0
        self.seen: dict[bytes, tuple[int, bool]] = {}
        self.unlabeled: list[int] = []
        self.labeled = 0

    def problem(self, line: int, fld: str, msg: str, code: str, severity: str = "error") -> None:
        self.problems.append(Problem(self.path, line, fld, msg, severity, code))

    def add(self, ln: _Line) -> None:
        if ln.problem:
            self.problem(ln.line, "", *ln.problem)
            self.skipped += 1
            return
        try:
            ex, warn = self._example(ln)
        except _Bad as e:
            for fld, msg, code in e.items:
                self.problem(ln.line, fld, msg, code)
            self.skipped += 1
            return
        for fld, msg, code in warn:
            self.problem(ln.line, fld, msg, code, "warning")
        if self._is_duplicate(ex):
            self.skipped += 1
            return
        if "label" in ln.obj:
            self.labeled += 1
        else:
            self.unlabeled.append(ln.line)
        self.examples.append(ex)

    def _example(self, ln: _Line) -> tuple[Example, list]:
        found = detect_format(ln.obj)
        self.fmt = self.fmt or found
        if found is None and not self.forced:
            keys = ", ".join(_shown(k) for k in sorted(ln.obj)[:20]) + (", ..." if len(ln.obj) > 20 else "") or "none"
            raise _Bad(("", "unrecognised record: expected conversations, messages, prompt+completion "
                            f"or text (found keys: {keys})", "format"))
        if not self.forced and found not in (self.fmt, _COMPATIBLE.get(self.fmt)):
            raise _Bad(("", f"mixed formats: this line is {found!r} but the file is {self.fmt!r}", "mixed_format"))
        try:
            rec = _parse_record(ln.obj, self.fmt, self.specs)
        except _Bad as e:
            if self.forced and found and found not in (self.fmt, _COMPATIBLE.get(self.fmt)):
                hint = f"this line looks like the {found!r} format, not {self.fmt!r}"
                e.items = (*e.items, ("", hint, "mixed_format"))
            raise
        final = rec.messages[-1]
        ex = Example(rec.messages[:-1], completion_text(final), True if rec.label is None else rec.label,
                     ln.line, ln.raw, final if "tool_calls" in final else None, rec.tools, _text_prompt(ln.obj, self.fmt))
        return ex, rec.warnings

    def _is_duplicate(self, ex: Example) -> bool:
        h = hashlib.blake2b(digest_size=16)
        for m in ex.prompt:
            h.update(m["role"].encode() + b"\x00" + m["content"].encode("utf-8", "surrogatepass") + b"\x01")
            if len(m) > 2:  # tool calls, call ids, tool names
                h.update(json.dumps({k: v for k, v in m.items() if k not in ("role", "content")}, sort_keys=True,
                                    ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\x01")
        h.update(b"\x02" + ex.completion.encode("utf-8", "surrogatepass"))
        if ex.tools is not None:
            h.update(b"\x03" + json.dumps(ex.tools, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        key = h.digest()
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = (ex.line, ex.label)
            return False
        line, label = first
        if label == ex.label:
            self.problem(ex.line, "", f"duplicate of line {line}; kept the first", "duplicate", "warning")
            return True
        word = {True: "desirable", False: "undesirable"}
        self.problem(ex.line, "label", f"same prompt and completion as line {line}, but labelled "
                     f"{word[ex.label]} here and {word[label]} there", "label_conflict", "warning")
        return False

    def finish(self) -> None:
        """Late problems; a native-format file's tools go to each example without its own."""
        if any(e.native for e in self.examples):
            self.problems += self.tools_problems
            for ex in self.examples:
                if ex.tools is None and self.tools is not None:
                    ex.tools = self.tools
        if self.labeled and self.unlabeled:
            for line in self.unlabeled:
                self.problem(line, "label", "missing while other lines have one; counted as desirable",
                             "label_missing", "warning")
        self.problems.sort(key=lambda p: p.line)


def _file_tools(path: Path, tools: str | os.PathLike[str] | None) -> tuple[list[dict[str, Any]] | None, str, list[Problem]]:
    """(schemas, source, problems) of a dataset's file-level tools: `tools` (relative to the dataset's
    directory; must load) or, without it, `tools.json` beside the dataset (its problems count only if
    the file turns out to use native tool calls)."""
    if tools:
        where = path.parent / Path(tools).expanduser()
        return load_tools(where), str(where), []
    beside = path.parent / toolcalls.TOOLS_FILE
    if not beside.is_file():
        return None, "", []
    try:
        return load_tools(beside), str(beside), []
    except DataError as e:
        return None, "", e.problems


def load(path: str | os.PathLike[str], format: str | None = None, strict: bool = True,
         tools: str | os.PathLike[str] | None = None) -> Dataset:
    """Read and validate a dataset file.

    strict: any error raises DataError listing every problem. Lenient: bad lines are set aside
    (counted in `skipped`, listed in `problems`). Missing, unreadable, empty files always raise.
    tools: the file-level tool schemas (config `data.tools`); default: `tools.json` beside the file.
    They are rendered with every example of a file that uses native tool calls, and its calls are
    checked against them.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise DataError([Problem(str(path), 0, "format",
                                 f"unknown format {format!r} (expected one of {', '.join(FORMATS)})")])
    if msg := _open_problem(path):
        raise _file_error(str(path), msg)
    file_tools = _file_tools(path, tools)
    hasher = hashlib.sha256()
    bom: list[Problem] = []
    try:
        with os.fdopen(open_regular(os.path.realpath(path)), "rb") as f:  # a link is followed, a FIFO refused
            lines = _source(path, f, hasher, bom)
            buffered, loader = [], None
            for ln in lines:
                if loader is None:
                    buffered.append(ln)
                    if sum(x.obj is not None for x in buffered) < DETECT_RECORDS:
                        continue
                    loader = _start(str(path), format, buffered, file_tools)
                else:
                    loader.add(ln)
            if loader is None:
                if not buffered:
                    raise _file_error(str(path), "file has no records (only blank lines)")
                loader = _start(str(path), format, buffered, file_tools)
    except NotRegularFile:
        raise _file_error(str(path), _NOT_REGULAR) from None
    except OSError as e:
        raise _file_error(str(path), f"cannot be read: {e.strerror or e}") from None
    loader.problems[:0] = bom
    loader.finish()
    fmt = loader.fmt or "unknown"
    ds = Dataset(path, fmt, loader.examples, loader.problems, loader.skipped, hasher.hexdigest(),
                 loader.tools, loader.tools_source)
    if strict and ds.errors:
        raise DataError(ds.problems)
    return ds


def _start(path: str, format: str | None, buffered: list[_Line], tools: tuple) -> _Loader:
    loader = _Loader(path, format or _choose_format(buffered), format is not None, tools)
    for ln in buffered:
        loader.add(ln)
    buffered.clear()
    return loader


# ---------------------------------------------------------------- stats, split, KTO weights


def _percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank p50/p90/p99 and max (all 0 for no values)."""
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    s = sorted(values)
    rank = lambda q: s[max(0, math.ceil(q * len(s)) - 1)]  # noqa: E731
    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": s[-1]}


def compute_stats(ds: Dataset, tokenizer=None, max_seq_len: int | None = None) -> dict[str, Any]:
    """Counts, label balance, turn and length distributions, truncation and KTO weight advice.

    Token figures (`tokens`, `over_max_seq_len`, `truncated_tokens`, `completion_too_long`) need a
    tokenizer (and max_seq_len for the last three); otherwise they are None.
    """
    total, d = len(ds.examples), ds.desirable
    turns = [e.turns for e in ds.examples]
    chars = [sum(len(m["content"]) for m in e.prompt) + len(e.completion) for e in ds.examples]
    codes = Counter(p.code for p in ds.problems)
    wd, wu = suggest_kto_weights(d, total - d)
    stats: dict[str, Any] = {
        "path": str(ds.path),
        "format": ds.format,
        "total": total,
        "desirable": d,
        "undesirable": total - d,
        "desirable_ratio": d / total if total else 0.0,
        "turns": {"min": min(turns, default=0), "mean": sum(turns) / total if total else 0.0,
                  "max": max(turns, default=0)},
        "chars": _percentiles(chars),
        "tokens": None,
        "max_seq_len": max_seq_len,
        "over_max_seq_len": None,
        "truncated_tokens": None,
        "completion_too_long": None,
        "duplicates": codes["duplicate"],
        "label_conflicts": codes["label_conflict"],
        "skipped": ds.skipped,
        "errors": len(ds.errors),
        "warnings": len(ds.warnings),
        "suggested_kto_weights": {"desirable_weight": wd, "undesirable_weight": wu},
        "native_tool_calls": sum(len(m.get("tool_calls", ())) for e in ds.examples for m in e.messages),
        "tool_results": sum(m["role"] == "tool" for e in ds.examples for m in e.prompt),
        "tools": len(ds.tools) if ds.native and ds.tools else 0,
        "tools_source": ds.tools_source if ds.native and ds.tools else "",
        "sha256": ds.sha256,
    }
    if tokenizer is not None:
        stats.update(_token_stats(ds, tokenizer, max_seq_len))
    return stats


def _token_stats(ds: Dataset, tokenizer, max_seq_len: int | None) -> dict[str, Any]:
    from tunedeck.core.template import encode_example, truncate

    bos = getattr(tokenizer, "bos_token_id", None)
    lengths, over, cut, too_long = [], 0, 0, 0
    for ex in ds.examples:
        enc = encode_example(tokenizer, ex)
        lengths.append(len(enc.ids))
        if max_seq_len is not None and len(enc.ids) > max_seq_len:
            t = truncate(enc, max_seq_len, bos)
            over, cut, too_long = over + 1, cut + t.truncated_prompt_tokens, too_long + t.completion_too_long
    out: dict[str, Any] = {"tokens": _percentiles(lengths)}
    if max_seq_len is not None:
        out.update(over_max_seq_len=over, truncated_tokens=cut, completion_too_long=too_long)
    return out


def split(examples: list[Example], valid_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/valid split, stratified by label.

    Each class gives round(n * valid_fraction) examples to valid, at least 1 when it has >= 2
    examples and the fraction is > 0, and always leaves at least 1 in train. Both lists keep the
    original order.
    """
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    valid_idx: set[int] = set()
    for label in (True, False):
        idx = [i for i, e in enumerate(examples) if e.label is label]
        n = len(idx)
        k = round(n * valid_fraction)
        if valid_fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0 if n < 2 else k
        random.Random(f"{seed}:{label}").shuffle(idx)
        valid_idx.update(idx[:k])
    train = [e for i, e in enumerate(examples) if i not in valid_idx]
    valid = [e for i, e in enumerate(examples) if i in valid_idx]
    return train, valid


def _kto_ratio_ok(nd: int, nu: int, wd: float, wu: float) -> bool:
    r = (wd * nd) / (wu * nu)
    return KTO_RATIO_RANGE[0] - 1e-9 <= r <= KTO_RATIO_RANGE[1] + 1e-9


def suggest_kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) with λD·nD / (λU·nU) in [1, 4/3] (KTO paper).

    One weight stays 1.0 and the minority class is up-weighted, rounded up to 2 decimals;
    (1.0, 1.0) when either class is empty or the balance is already inside the range.
    """
    nd, nu = n_desirable, n_undesirable
    if nd <= 0 or nu <= 0 or _kto_ratio_ok(nd, nu, 1.0, 1.0):
        return 1.0, 1.0
    r = nd / nu
    if r < 1:  # too few desirable: raise λD so that λD·r >= 1
        w = math.ceil(round(100 / r, 6)) / 100
        while not _kto_ratio_ok(nd, nu, w, 1.0):
            w = round(w + 0.01, 2)
        return w, 1.0
    w = math.ceil(round(100 * r * 3 / 4, 6)) / 100  # too many desirable: raise λU so r/λU <= 4/3
    while not _kto_ratio_ok(nd, nu, 1.0, w):
        w = round(w + 0.01, 2)
    return 1.0, w


def check_kto_weights(n_desirable: int, n_undesirable: int, desirable_weight: float,
                      undesirable_weight: float) -> str | None:
    """A warning if the weights break the KTO paper's rule for these counts, else None."""
    nd, nu, wd, wu = n_desirable, n_undesirable, desirable_weight, undesirable_weight
    if nd <= 0 or nu <= 0:
        return f"KTO needs both desirable and undesirable examples (have {nd} and {nu})"
    if wd <= 0 or wu <= 0:
        return f"KTO weights must be positive (desirable_weight={wd}, undesirable_weight={wu})"
    if _kto_ratio_ok(nd, nu, wd, wu):
        return None
    sd, su = suggest_kto_weights(nd, nu)
    r = (wd * nd) / (wu * nu)
    return (f"desirable_weight×{nd} / (undesirable_weight×{nu}) = {r:.2f}, outside [1, 1.33] "
            f"recommended by the KTO paper; try desirable_weight={sd}, undesirable_weight={su}")
