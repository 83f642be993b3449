"""Length figures of a dataset: nearest-rank percentiles, and token lengths with what truncation would cut."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .template import Encoded


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank p50/p90/p99 and max (all 0 for no values)."""
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    s = sorted(values)
    rank = lambda q: s[max(0, math.ceil(q * len(s)) - 1)]  # noqa: E731
    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": s[-1]}


def token_stats(encodings: Iterable[Encoded], max_seq_len: int | None, bos: int | None) -> dict[str, Any]:
    """Token-length percentiles of the encoded examples and, with `max_seq_len`, how many are over it,
    the prompt tokens truncation cuts and how many completions do not fit even then."""
    from .template import truncate  # the template module (jinja2) loads only when token figures are asked for

    lengths, over, cut, too_long = [], 0, 0, 0
    for enc in encodings:
        lengths.append(len(enc.ids))
        if max_seq_len is not None and len(enc.ids) > max_seq_len:
            t = truncate(enc, max_seq_len, bos)
            over, cut, too_long = over + 1, cut + t.truncated_prompt_tokens, too_long + t.completion_too_long
    out: dict[str, Any] = {"tokens": percentiles(lengths)}
    if max_seq_len is not None:
        out.update(over_max_seq_len=over, truncated_tokens=cut, completion_too_long=too_long)
    return out
