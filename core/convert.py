"""Convert a dataset between the content-embedded and the native tool-call forms.

``native``: an assistant turn whose whole text is a tool call (any form `core.toolcalls` reads: a
``{"name", "arguments"}`` object, ``[TOOL_CALLS] [...]`` or a fenced block) becomes structured
``tool_calls`` (OpenAI form, arguments as an object, a 9-character id derived from the line and
turn), and each tool result after it names its call (``tool_call_id``, ``name``). ``content``: the
reverse; one call becomes its ``{"name", "arguments"}`` JSON, several the ``[TOOL_CALLS] [...]`` text,
and tool results lose their ids.

The input must load without errors (`core.data.load`); every record is written (JSONL), with its
other keys unchanged. What could not be converted (a call attempt that does not parse, ShareGPT
records) is left as it was and reported. The output is written atomically; a ``tools.json`` beside
the input is copied beside the output when converting to native and there is none there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import data, toolcalls
from .fsutil import atomic_write_text

TARGETS = ("native", "content")
_MESSAGE_KEYS = ("messages", "conversations", "prompt", "completion")


@dataclass
class Report:
    """What a conversion did: records written, calls converted, and what it left as it was."""

    records: int = 0
    calls: int = 0
    tools_copied: str = ""
    left: list[str] = field(default_factory=list)  # "LINE: field: why" for each thing left unconverted


def _call_id(line: int, turn: int, k: int) -> str:
    """9 hex digits from (line, turn, call): the ids `sample_data/generate.py --native` gives."""
    return hashlib.sha256((f"{line}:{turn}" + (f":{k}" if k else "")).encode()).hexdigest()[:9]


def _to_native(msgs: list[dict[str, Any]], line: int, fld: str, report: Report) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # calls of the last assistant turn still waiting for their results
    for i, m in enumerate(msgs):
        role, text = m.get("role"), m.get("content")
        if role == "assistant" and isinstance(text, str) and not m.get("tool_calls"):
            check = toolcalls.check_tool_call(text)
            if check.ok:
                calls = [{"id": _call_id(line, i, k), "type": "function",
                          "function": {"name": c.name, "arguments": c.arguments}} for k, c in enumerate(check.calls)]
                out.append({**m, "content": None, "tool_calls": calls})
                pending, report.calls = list(calls), report.calls + len(calls)
                continue
            if check.code != "no_call":
                report.left.append(f"{line}: {fld}[{i}].content: left as text: {check.reason}")
            pending = []
        elif role == "tool" and pending and "tool_call_id" not in m:
            c = pending.pop(0)
            out.append({"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"],
                        **{k: v for k, v in m.items() if k != "role"}})
            continue
        elif role != "tool":
            pending = []
        out.append(m)
    return out


def _to_content(msgs: list[dict[str, Any]], report: Report) -> list[dict[str, Any]]:
    out = []
    for m in msgs:
        calls = m.get("tool_calls")
        if m.get("role") == "assistant" and isinstance(calls, list) and calls:
            plain = [toolcalls.parse_tool_calls(json.dumps(c), "json") for c in calls]
            objs = [{"name": p[0].name, "arguments": p[0].arguments} for p in plain if p]
            text = (json.dumps(objs[0], ensure_ascii=False) if len(objs) == 1
                    else f"{toolcalls.MISTRAL_PREFIX} {json.dumps(objs, ensure_ascii=False)}")
            out.append({k: v for k, v in m.items() if k != "tool_calls"} | {"content": text})
            report.calls += len(objs)
        elif m.get("role") == "tool":
            out.append({k: v for k, v in m.items() if k not in ("tool_call_id", "name")})
        else:
            out.append(m)
    return out


def convert_record(obj: dict[str, Any], line: int, to: str, report: Report) -> dict[str, Any]:
    """One record with its message lists converted (other keys as they were)."""
    out = dict(obj)
    for key in _MESSAGE_KEYS:
        msgs = obj.get(key)
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            continue
        if any("from" in m for m in msgs):
            report.left.append(f"{line}: {key}: ShareGPT turns are left as they are")
            continue
        out[key] = _to_native(msgs, line, key, report) if to == "native" else _to_content(msgs, report)
    return out


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, record) of every record of a file that `data.load` accepted."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return list(enumerate(json.loads(text), 1))
    return [(n, json.loads(s)) for n, s in enumerate(text.splitlines(), 1) if s.strip()]


def convert(src: str | os.PathLike[str], dest: str | os.PathLike[str], to: str) -> Report:
    """Convert the dataset `src` into `dest` (JSONL, written atomically); DataError if `src` has errors."""
    if to not in TARGETS:
        raise ValueError(f"unknown target {to!r} (expected one of {', '.join(TARGETS)})")
    src, dest = Path(src), Path(dest)
    data.load(src)  # refuse a file with errors, naming every one
    report = Report()
    lines = []
    for line, obj in _records(src):
        lines.append(json.dumps(convert_record(obj, line, to, report), ensure_ascii=False))
        report.records += 1
    atomic_write_text(dest, "\n".join(lines) + "\n")
    tools_src, tools_dest = src.parent / toolcalls.TOOLS_FILE, dest.parent / toolcalls.TOOLS_FILE
    if to == "native" and tools_src.is_file() and not tools_dest.exists():
        atomic_write_text(tools_dest, tools_src.read_text(encoding="utf-8"))
        report.tools_copied = str(tools_dest)
    return report

