"""The sandbox untrusted chat templates render in: jinja2's immutable sandbox, bounded in time and size.

Chat templates come with the model directory, so they are untrusted. `render` runs one through jinja2's
immutable sandbox with transformers' own globals, filters and extensions (the same text as
`apply_chat_template`), bounded in time (every loop iteration, call, operator and filter checks the
deadline) and in size (no output, string, list or number the template builds may exceed the limit;
operations that multiply sizes are checked before they run). A violation raises `LimitHit`.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer


@dataclass(frozen=True, slots=True)
class _Limits:
    """The limits of the rendering in progress: its deadline (time.monotonic()), the seconds it was given,
    and the characters any text (or rendered size of any list/number) it builds may reach."""

    deadline: float
    seconds: float
    chars: int


_limits: contextvars.ContextVar[_Limits] = contextvars.ContextVar(
    "tunedeck_template_limits", default=_Limits(float("inf"), float("inf"), 0))

_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}
_DIGITS = re.compile(r"\d+")


class LimitHit(Exception):
    """Raised inside a rendering when a limit is reached; the message says which."""


def _tick() -> None:
    limits = _limits.get()
    if time.monotonic() > limits.deadline:
        raise LimitHit(f"ran longer than {limits.seconds:g} s (the limit for one rendering)")


def _size(x: Any, budget: int | None = None) -> int:
    """An upper estimate of len(str(x)), counted only until it passes `budget`."""
    budget = _limits.get().chars if budget is None else budget
    if isinstance(x, str):
        return len(x)
    if isinstance(x, bool) or x is None or isinstance(x, float):
        return 32
    if isinstance(x, int):
        return x.bit_length() * 3 // 10 + 2
    if isinstance(x, jinja2.utils.Namespace):
        x = getattr(x, "_Namespace__attrs", {})
    if isinstance(x, Mapping):
        x = [v for item in x.items() for v in item]
    if isinstance(x, (list, tuple, set, frozenset)):
        total = 2
        for item in x:
            total += 2 + _size(item, budget - total)
            if total > budget:
                break
        return total
    return 64


def _need(n: int) -> None:
    chars = _limits.get().chars
    if n > chars:
        raise LimitHit(f"would build a text of more than {chars:,} characters (the limit)")


def _check(value: Any) -> Any:
    _need(_size(value))
    return value


def _widths(fmt: str, args: Any) -> int:
    """An upper bound on the padding a printf- or str.format-style format can add."""
    ints = [a for a in (args if isinstance(args, (list, tuple)) else [args]) if isinstance(a, int)]
    return sum(int(d) for d in _DIGITS.findall(fmt)) + sum(abs(i) for i in ints)


def _replace_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * len(new)


def _materialize(value: Any) -> list[Any]:
    out = []
    for item in value:
        _tick()
        out.append(item)
    return out


def _bounded_filter(name: str, func: Any) -> Any:
    """`func` (a jinja2 filter) with the deadline and size checks; multiplying filters checked first."""
    from jinja2.utils import _PassArg

    skip = 1 if _PassArg.from_obj(func) is not None else 0

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        _tick()
        args = list(args)
        value, rest = (args[skip], args[skip + 1:]) if len(args) > skip else (None, [])
        arg = rest[0] if rest else None
        if name in ("center", "indent") and isinstance(arg, int):
            _need(_size(value) * (2 if name == "center" else 1 + max(arg, 0)) + max(arg, 0))
        elif name == "indent" and isinstance(arg, str):
            _need(_size(value) * (1 + len(arg)))
        elif name == "replace" and isinstance(value, str):
            _need(_replace_size(value, *rest[:3]))
        elif name == "format" and isinstance(value, str):
            _need(len(value) + _size(rest) + _size(kwargs) + _widths(value, rest))
        elif name in ("wordwrap", "urlize"):
            _need(_size(value) * (1 + _size(rest) + _size(kwargs)))
        elif name in ("batch", "slice") and isinstance(arg, int):
            _need(arg)
        elif name == "tojson":
            indent = kwargs.get("indent", rest[1] if len(rest) > 1 else None)
            _need(_size(value) * (2 + 16 * (indent if isinstance(indent, int) else _size(indent))))
        elif name == "join" and value is not None:
            value = args[skip] = _materialize(value)
            _need(_size(value) + len(value) * _size(arg if arg is not None else kwargs.get("d", "")))
        return _check(func(*args, **kwargs))

    return run


class _Guards(NodeTransformer):
    """Wrap each `{% for %}` iterable in `tunedeck_loop` and each `a ~ b` in `tunedeck_concat`."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = _env_call("tunedeck_loop", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return _env_call("tunedeck_concat", node.nodes, node.lineno)


def _env_call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None, lineno=lineno)


class _Bounded(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with a deadline and a size limit on everything a template builds."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, finalize=_check, **kwargs)

    @staticmethod
    def concat(parts: Any) -> str:
        """`"".join` for rendered output, macro and block bodies, stopping at the size limit."""
        out, total = [], 0
        for part in parts:
            _tick()
            total += len(part)
            _need(total)
            out.append(part)
        return "".join(out)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then route every loop's iterable and every `~` through the checks (`_Guards`)."""
        return _Guards().visit(super()._parse(source, name, filename))

    @staticmethod
    def tunedeck_loop(iterable: Any) -> Any:
        for item in iterable:
            _tick()
            yield item

    @staticmethod
    def tunedeck_concat(*items: Any) -> str:
        _need(sum(_size(i) for i in items))
        return "".join(str(i) for i in items)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and isinstance(seq, (str, list, tuple)):
                    _need(_size(seq) * max(n, 0))
            if isinstance(left, int) and isinstance(right, int):
                _need(_size(left) + _size(right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            _need(_size(left) * max(right, 0))
        elif operator == "%" and isinstance(left, str):
            _need(len(left) + _size(right) + _widths(left, right))
        return _check(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Any:
        """jinja2's sandboxed `str.format` / `format_map`, checked for size before it runs."""
        fmt = super().wrap_str_format(value)
        if fmt is None:
            return None
        owner = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _tick()
            _need(len(owner) + _size(args) + _size(kwargs) + _widths(owner, [*args, *kwargs.values()]))
            return fmt(*args, **kwargs)

        return functools.update_wrapper(bounded, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja2's signature
        _tick()
        owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in _WIDTH_METHODS and args and isinstance(args[0], int):
                _need(max(args[0], len(owner)))
            elif name == "expandtabs":
                _need(len(owner) * max(args[0] if args and isinstance(args[0], int) else 8, 1))
            elif name == "replace" and len(args) >= 2:
                _need(_replace_size(owner, *args[:3]))
            elif name == "join" and args:
                args = (_materialize(args[0]), *args[1:])
                _need(_size(args[0]) + len(args[0]) * len(owner))
        result = super().call(__context, __obj, *args, **kwargs)
        return _check(result) if isinstance(result, (str, int, list, tuple, dict)) else result


@functools.lru_cache(maxsize=1)
def _environment() -> _Bounded:
    """A bounded environment with the options, globals, filters and extensions transformers renders with."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    ref = _compile_jinja_template("").environment
    env = _Bounded(trim_blocks=ref.trim_blocks, lstrip_blocks=ref.lstrip_blocks,
                   extensions=[type(e) for e in ref.extensions.values()])
    env.globals.update(ref.globals)
    env.filters.update({k: _bounded_filter(k, f) for k, f in ref.filters.items()})
    return env


@functools.lru_cache(maxsize=16)
def _compile(chat_template: str) -> jinja2.Template:
    return _environment().from_string(chat_template)


def render(chat_template: str, seconds: float, chars: int, **context: Any) -> str:
    """`chat_template` rendered with `context` in the bounded sandbox; LimitHit once it has run `seconds`
    of wall-clock time or would build more than `chars` characters."""
    token = _limits.set(_Limits(time.monotonic() + seconds, seconds, chars))
    try:
        return _compile(chat_template).render(**context)
    finally:
        _limits.reset(token)
