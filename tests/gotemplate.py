"""A small renderer for the subset of Go's text/template that tunedeck's Ollama TEMPLATE uses.

Supported: text; actions with `{{-`/`-}}` whitespace trimming; `$x := pipeline`, `$x = pipeline`
(assignment to an outer variable, as Go ≥ 1.11 allows); `range $i, $m := pipeline` and `range $i := N` over
an integer (Go ≥ 1.22); `if` / `else if` / `else` / `end`; field access (`.Messages`, `$.System`, `$m.Role`);
string, integer, `true` and `false` literals; parenthesised calls of `eq`, `ne`, `and`, `or`, `not`, `len`,
`slice`, `index` and Ollama's `json`. Strings are Go's: `len`, `slice` and `index` count UTF-8 bytes (`index`
gives a byte). Anything else raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|(-?\d+)|(\$?[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*|\$?\.[\w.]*|\$))')


def _parse(source: str) -> list[Any]:
    """Text and actions → a nested list: ("text", s) | ("out", expr) | ("set", name, expr, declare) |
    ("if", [(cond, body)...], else_body) | ("range", (ivar, vvar), expr, body)."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if pieces and pieces[-1][0] == "trim":
            pieces.pop()
            text = text.lstrip()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2).strip()))
        if m.group(3):
            pieces.append(("trim", ""))
        pos = m.end()
    tail = source[pos:]
    if pieces and pieces[-1][0] == "trim":
        pieces.pop()
        tail = tail.lstrip()
    pieces.append(("text", tail))
    body, rest = _block(pieces, 0)
    if rest != len(pieces):
        raise ValueError(f"unexpected {pieces[rest][1]!r}")
    return body


def _block(pieces: list[tuple[str, str]], i: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(pieces):
        kind, text = pieces[i]
        if kind == "text":
            if text:
                out.append(("text", text))
            i += 1
            continue
        if text == "end" or text == "else" or text.startswith("else if "):
            return out, i
        if text.startswith("if "):
            node, i = _if(pieces, i, text[3:])
            out.append(node)
        elif text.startswith("range "):
            m = re.fullmatch(r"range\s+(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*(.+)", text, re.S)
            if not m:
                raise ValueError(f"unsupported range: {text!r}")
            body, i = _block(pieces, i + 1)
            if pieces[i][1] != "end":
                raise ValueError("range without end")
            out.append(("range", (m.group(1), m.group(2)), _expr(m.group(3)), body))
            i += 1
        elif m := re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", text, re.S):
            out.append(("set", m.group(1), _expr(m.group(3)), m.group(2) == ":="))
            i += 1
        else:
            out.append(("out", _expr(text)))
            i += 1
    return out, i


def _if(pieces: list[tuple[str, str]], i: int, cond: str) -> tuple[Any, int]:
    branches = []
    else_body: list[Any] = []
    while True:
        body, i = _block(pieces, i + 1)
        branches.append((_expr(cond), body))
        text = pieces[i][1]
        if text.startswith("else if "):
            cond = text[len("else if "):]
            continue
        if text == "else":
            else_body, i = _block(pieces, i + 1)
            text = pieces[i][1]
        if text != "end":
            raise ValueError("if without end")
        return ("if", branches, else_body), i + 1


def _expr(text: str) -> Any:
    tokens = [t for t in _TOKEN.findall(text)]
    if "".join("".join(t) for t in tokens).replace(" ", "") != text.replace(" ", "").replace("\n", ""):
        raise ValueError(f"unsupported expression: {text!r}")
    node, n = _call(tokens, 0)
    if n != len(tokens):
        raise ValueError(f"unsupported expression: {text!r}")
    return node


def _operand(tokens: list[tuple[str, ...]], i: int) -> tuple[Any, int]:
    lp, _rp, string, number, name = tokens[i]
    if lp:
        node, i = _call(tokens, i + 1)
        if not tokens[i][1]:
            raise ValueError("missing )")
        return node, i + 1
    if string:
        return ("lit", json.loads(string)), i + 1
    if number:
        return ("lit", int(number)), i + 1
    return ("name", name), i + 1


def _call(tokens: list[tuple[str, ...]], i: int) -> tuple[Any, int]:
    first, i = _operand(tokens, i)
    args = []
    while i < len(tokens) and not tokens[i][1]:
        arg, i = _operand(tokens, i)
        args.append(arg)
    if not args:
        return first, i
    if first[0] != "name" or first[1] not in (*_FUNCS, "and", "or"):
        raise ValueError(f"unsupported function {first!r}")
    return ("call", first[1], args), i


def _truth(v: Any) -> bool:
    return v not in (None, False, 0, "") and not (isinstance(v, (list, dict)) and not v)


def go_json(v: Any) -> str:
    """Go's json.Marshal for strings and plain values (it escapes <, > and &)."""
    s = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _bytes(v: Any) -> Any:
    return v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v


def _slice(v: Any, *ix: int) -> Any:
    """Go's slice: of a string by byte offsets (a cut inside a character stays a cut, as in Go)."""
    part = _bytes(v)[ix[0]:ix[1]] if len(ix) == 2 else _bytes(v)[ix[0]:]
    return part.decode("utf-8", "surrogateescape") if isinstance(v, str) else part


_FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "len": lambda v: len(_bytes(v)),
    "slice": _slice,
    "index": lambda v, i: _bytes(v)[i],
    "json": go_json,
}


class _Scope:
    def __init__(self, dot: Any) -> None:
        self.vars: list[dict[str, Any]] = [{"$": dot}]

    def lookup(self, name: str) -> Any:
        for frame in reversed(self.vars):
            if name in frame:
                return frame[name]
        raise ValueError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.vars):
            if name in frame:
                frame[name] = value
                return
        raise ValueError(f"assignment to undeclared {name}")


def _field(value: Any, path: list[str]) -> Any:
    for part in path:
        if part:
            value = value.get(part) if isinstance(value, dict) else None
    return value


def _eval(node: Any, scope: _Scope, dot: Any) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "name":
        name = node[1]
        if name.startswith("$"):
            var, _, rest = name.partition(".")
            return _field(scope.lookup(var), rest.split(".") if rest else [])
        if name.startswith("."):
            return _field(dot, name[1:].split("."))
        if name in ("true", "false"):
            return name == "true"
        raise ValueError(f"unsupported name {name!r}")
    fn, args = node[1], node[2]
    if fn == "and":
        v = None
        for a in args:
            v = _eval(a, scope, dot)
            if not _truth(v):
                return v
        return v
    if fn == "or":
        v = None
        for a in args:
            v = _eval(a, scope, dot)
            if _truth(v):
                return v
        return v
    return _FUNCS[fn](*(_eval(a, scope, dot) for a in args))


def _run(nodes: list[Any], scope: _Scope, dot: Any, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            v = _eval(node[1], scope, dot)
            out.append("" if v is None else str(v))
        elif kind == "set":
            value = _eval(node[2], scope, dot)
            if node[3]:
                scope.vars[-1][node[1]] = value
            else:
                scope.assign(node[1], value)
        elif kind == "if":
            for cond, body in node[1]:
                if _truth(_eval(cond, scope, dot)):
                    scope.vars.append({})
                    _run(body, scope, dot, out)
                    scope.vars.pop()
                    break
            else:
                scope.vars.append({})
                _run(node[2], scope, dot, out)
                scope.vars.pop()
        elif kind == "range":
            (ivar, vvar), items = node[1], _eval(node[2], scope, dot)
            if isinstance(items, int) and not isinstance(items, bool):
                items = range(items)
            for i, item in enumerate(items or []):
                scope.vars.append({ivar: i, vvar: item} if vvar else {ivar: item})
                _run(node[3], scope, item, out)
                scope.vars.pop()


def render(source: str, data: dict[str, Any]) -> str:
    """Render `source` with `data` as the dot (and `$`)."""
    out: list[str] = []
    _run(_parse(source), _Scope(data), data, out)
    return "".join(out)
