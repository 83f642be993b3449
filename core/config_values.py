"""One config value checked against its field's type, its range or (`lora.keys`) the layers a block has,
and a bad value shown in a message."""

from __future__ import annotations

import math
import typing
from typing import Any

# Linear layers inside a transformer block of the supported architectures (llama, mistral, qwen2,
# qwen3, gemma: attention + SwiGLU MLP); `lora.keys` names them, optionally with their parent
# ("self_attn.q_proj"). The embedding and the output head are not adapted.
LORA_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_LAYERS = 4096


def type_name(tp: Any) -> str:
    """How a field's type is named in a message ("an integer", "a list of strings", ...)."""
    if typing.get_origin(tp) is list:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


class Underflow(float):
    """A TOML float literal that is not zero but reads as 0.0 (1e-400); `literal` is its text."""

    literal: str


def coerce(key: str, value: Any, tp: Any) -> tuple[Any, str | None]:
    """Check `value` against `tp`; return (value, None) or (None, what was expected)."""
    if isinstance(value, Underflow):
        return None, f"got {value.literal}, too small for a 64-bit float (it would read as 0); expected 0 or larger"
    expected = f"expected {type_name(tp)}, got {describe(value)}"
    if tp is bool:
        return (value, None) if isinstance(value, bool) else (None, expected)
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, expected)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value), None
            except OverflowError:
                return None, f"got {describe(value)}, too large for a 64-bit float"
        return None, expected
    if tp is str:
        return (value, None) if isinstance(value, str) else (None, expected)
    if typing.get_origin(tp) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value), None
        return None, expected
    raise TypeError(f"unsupported field type for {key}: {tp}")


def describe(value: Any) -> str:
    """"integer 5", "string 'x'", ...: the value's repr cut short (see cut)."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{kind.get(type(value), type(value).__name__)} {cut(value)}"


def cut(value: Any, limit: int = 60) -> str:
    """repr(value) in at most `limit` characters: a long or deeply nested value is shown by its start."""
    if isinstance(value, int) and abs(value).bit_length() > 4 * limit:
        return f"<an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1:,} digits>"
    try:
        text = repr(value)
    except RecursionError:
        return "<nested too deeply to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def range_problem(value: float, lo: float | None, hi: float | None, inclusive: bool) -> str | None:
    """What is wrong with a numeric value for a RANGES entry, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"got {value!r}; expected a finite number"
    span = f" (the range is {lo} to {hi})" if lo is not None and hi is not None else ""
    if lo is not None and (value < lo if inclusive else value <= lo):
        return f"got {cut(value)}; expected {'>=' if inclusive else '>'} {lo}{span}"
    if hi is not None and value > hi:
        return f"got {cut(value)}; expected <= {hi}{span}"
    return None


def lora_problems(num_layers: int, keys: list[str]) -> list[tuple[str, str]]:
    """(key, message) of each problem: lora.num_layers is -1 or a count; lora.keys names linear layers of
    a block (LORA_KEYS)."""
    problems: list[tuple[str, str]] = []
    if num_layers == 0:
        problems.append(("lora.num_layers", f"got 0; expected -1 (every layer) or 1 to {MAX_LAYERS} "
                         "(the last N layers)"))
    if not keys:
        problems.append(("lora.keys", "is empty; expected at least one layer name such as \"q_proj\""))
    for key in keys:
        if key.rsplit(".", 1)[-1] not in LORA_KEYS:
            problems.append(("lora.keys", f"got {cut(key)}; not a linear layer of a transformer block; "
                             f"expected names among {', '.join(LORA_KEYS)}"))
    return problems
