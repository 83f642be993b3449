"""Native tool calling in dataset records: structured tool calls, their arguments, tool results, tool schemas.

An assistant message may carry ``tool_calls`` (``[{"id"?, "type": "function", "function": {"name",
"arguments"}}]``, or bare ``{"name", "arguments"}``; arguments an object or a JSON string holding
one), normalised to arguments objects; a ``tool`` message may carry ``tool_call_id`` (an earlier
call's id) and ``name``. Tool schemas are JSON-schema function definitions, bare or ``{"type":
"function", "function"}``. Calls are checked against the schemas (`core.toolcalls.call_problems`):
unknown tool, missing required argument, wrong type; and arguments that are not JSON.

Each problem is a (field, message, code) triple, appended to the list the caller passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import toolcalls
from .data_read import (
    BOM,
    ReadError,
    file_error,
    is_json_list,
    json_loads,
    open_problem,
    opened,
    read_json_list,
    shown,
    type_name,
)

Found = list[tuple[str, str, str]]  # (field, message, code) of each problem found


def tool_result(m: dict, at: str, call_ids: set[str], msg: dict[str, Any], bad: Found) -> None:
    """Copy a tool message's `tool_call_id` and `name` into `msg`; the id must be an earlier call's."""
    for key in ("tool_call_id", "name"):
        v = m.get(key)
        if v is None:
            continue
        if not isinstance(v, str) or not v:
            bad.append((f"{at}.{key}", f"expected a non-empty string, got {type_name(v)}", "type"))
        elif key == "tool_call_id" and v not in call_ids:
            bad.append((f"{at}.{key}", f"{shown(v)!r} is not the id of an earlier tool call", "tool_call_id"))
        else:
            msg[key] = v


def tool_calls(value: Any, fld: str, tools: dict[str, toolcalls.ToolSpec] | None, bad: Found,
               schema_bad: Found) -> list[dict[str, Any]]:
    """Structured tool calls (OpenAI / Hugging Face form, or bare {"name", "arguments"}), normalised to
    ``{"type": "function", "function": {"name", "arguments": {...}}, "id"?}``; problems go to `bad`,
    those against the tools' schemas to `schema_bad`."""
    if not isinstance(value, list):
        bad.append((fld, f"expected a list of tool calls, got {type_name(value)}", "type"))
        return []
    out = []
    for j, c in enumerate(value):
        at = f"{fld}[{j}]"
        if not isinstance(c, dict):
            bad.append((at, f"expected an object with \"function\", got {type_name(c)}", "type"))
            continue
        fn, fat = (c.get("function"), f"{at}.function") if "function" in c else (c, at)
        if not isinstance(fn, dict):
            bad.append((fat, f"expected an object with \"name\" and \"arguments\", got {type_name(fn)}", "type"))
            continue
        if c.get("type", "function") != "function":
            bad.append((f"{at}.type", f"expected \"function\", got {json.dumps(c.get('type'))[:40]}", "tool_calls"))
        call: dict[str, Any] = {"type": "function", "function": {}}
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            bad.append((f"{fat}.name", "missing" if name is None else f"expected a tool name, got {type_name(name)}",
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
                bad.append((f"{at}.id", f"expected a non-empty string, got {type_name(c['id'])}", "type"))
        out.append(call)
    return out


def _arguments(fn: dict, fld: str, bad: Found) -> dict[str, Any] | None:
    """A call's arguments as an object (given as one, or as a JSON string holding one), or None."""
    args = fn.get("arguments")
    if args is None:
        bad.append((fld, "missing (use {} for a tool without arguments)", "missing"))
        return None
    if isinstance(args, str):
        try:
            args, repeated = json_loads(args)
        except json.JSONDecodeError as e:
            bad.append((fld, f"not JSON: {e.msg} at column {e.colno}", "arguments_json"))
            return None
        except (RecursionError, ValueError):
            bad.append((fld, "not JSON that can be read (nested too deeply, or a number too long)", "arguments_json"))
            return None
        if repeated:
            bad.append((fld, f"JSON repeats the key \"{shown(repeated[0])}\"", "duplicate_key"))
            return None
    if not isinstance(args, dict):
        bad.append((fld, f"expected a JSON object of arguments, got {type_name(args)}", "type"))
        return None
    return args


def tool_schemas(value: Any, fld: str) -> tuple[list[dict[str, Any]], Found]:
    """Validate a list of tool schemas (JSON-schema function definitions, bare or in the OpenAI
    ``{"type": "function", "function": {...}}`` form), normalised to the OpenAI form with
    name, description (default "") and parameters; with every problem found (the schemas are
    unusable when there is any)."""
    if not isinstance(value, list):
        return [], [(fld, f"expected a list of tool schemas, got {type_name(value)}", "type")]
    out: list[dict[str, Any]] = []
    bad: Found = []
    names: set[Any] = set()
    for i, item in enumerate(value):
        at = f"{fld}[{i}]"
        if not isinstance(item, dict):
            bad.append((at, f"expected a tool schema object, got {type_name(item)}", "type"))
            continue
        fn, fat = (item.get("function"), f"{at}.function") if "function" in item else (item, at)
        if not isinstance(fn, dict):
            bad.append((fat, f"expected an object, got {type_name(fn)}", "type"))
            continue
        name, desc = fn.get("name"), fn.get("description", "")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not name.strip():
            bad.append((f"{fat}.name", "missing" if name is None else f"expected a string, got {type_name(name)}",
                        "missing" if name is None else "type"))
        elif name in names:
            bad.append((f"{fat}.name", f"tool {shown(name)!r} is defined twice", "duplicate_tool"))
        else:
            names.add(name)
        if not isinstance(desc, str):
            bad.append((f"{fat}.description", f"expected a string, got {type_name(desc)}", "type"))
        bad += _parameters_problems(params, f"{fat}.parameters")
        out.append({"type": "function", "function": {"name": name, "description": desc, "parameters": params}})
    return out, bad


def _parameters_problems(params: Any, fld: str) -> Found:
    if not isinstance(params, dict):
        return [(fld, f"expected a JSON-schema object, got {type_name(params)}", "type")]
    out = []
    props, required = params.get("properties", {}), params.get("required", [])
    if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
        out.append((f"{fld}.properties", "expected an object mapping each argument to its schema", "type"))
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        out.append((f"{fld}.required", "expected a list of argument names", "type"))
    return out


def read_tool_file(path: Path, limit: int) -> list[dict[str, Any]]:
    """Tool schemas from a JSON file (a list, or {"tools": [...]}; the first `limit` bytes read), normalised;
    ReadError with every problem."""
    if msg := open_problem(path):
        raise file_error(msg)
    with opened(path) as f:
        data = f.read(limit)
    schemas, bad = tool_schemas(_tool_items(data), "")
    if bad:
        raise ReadError(*[(0, fld.lstrip("."), msg, code) for fld, msg, code in bad])
    return schemas


def _tool_items(data: bytes) -> list[Any]:
    """The items of a tool-schema file's list (a JSON list, or an object's "tools"); ReadError if there is none."""
    if is_json_list(data):
        lines = list(read_json_list(data, lambda: None))
        bad = [ln for ln in lines if ln.problem]
        if bad:
            raise ReadError(*[(0, f"[{ln.line - 1}]", *ln.problem) for ln in bad])
        return [ln.obj for ln in lines]
    try:
        obj, _ = json_loads(data.removeprefix(BOM).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise file_error(f"invalid JSON: {getattr(e, 'msg', e)}", 0, "json") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("tools"), list):
        raise file_error("expected a JSON list of tool schemas (or an object with a \"tools\" list)")
    return obj["tools"]
