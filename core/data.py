"""Read and validate chat datasets (JSONL, or a .json list), compute stats, split, KTO weights.

Formats (auto-detected from the first valid records of a file; `format=` forces one), roles and labels:
`core.data_records`; native tool calls, tool results and tool schemas: `core.data_tools`; bytes into
lines (and why a line is unusable): `core.data_read`. Tool schemas come per record (``tools``), else from the
file's: ``load(tools=)`` (config ``data.tools``) or a ``tools.json`` beside the dataset; a file with
any native call renders them with every example (`Example.tools`). Calls are checked against the
schemas: unknown tool, missing required argument, wrong type (errors; warnings in an undesirable
example's completion), and arguments that are not JSON. The content-embedded form (the call JSON as
the assistant's text) is read as before, without tools. A missing label means desirable; in a file
where other lines carry labels that gets a warning.

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
import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import toolcalls
from .data_read import MAX_LINE_BYTES, Line, ReadError, open_problem, opened, read_lines, shown
from .data_records import COMPATIBLE, Bad, example_key, parse_record, text_prompt
from .data_stats import percentiles, token_stats
from .data_tools import read_tool_file

FORMATS = ("kto", "messages", "trl_unpaired", "sharegpt", "prompt_completion", "text")
DETECT_RECORDS = 20
KTO_RATIO_RANGE = (1.0, 4 / 3)


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


# ---------------------------------------------------------------- formats


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


def _choose_format(lines: list[Line]) -> str | None:
    """Most common format among the first valid records (trl_unpaired wins over unlabeled)."""
    counts = Counter(f for f in (detect_format(x.obj) for x in lines if x.obj is not None) if f)
    if not counts:
        return None
    if counts["trl_unpaired"] and counts["prompt_completion"]:
        counts["trl_unpaired"] += counts.pop("prompt_completion")
    return counts.most_common(1)[0][0]


def completion_text(message: dict[str, Any]) -> str:
    """The text form of an assistant message: its content, or its tool calls as ``[TOOL_CALLS] [...]``."""
    if message.get("tool_calls"):
        return toolcalls.calls_text(message["tool_calls"])
    return message["content"]


# ---------------------------------------------------------------- load


def _file_error(path: str, message: str) -> DataError:
    return DataError([Problem(path, 0, "", message, code="file")])


def _bom_problem(path: str) -> Problem:
    return Problem(path, 1, "", "file starts with a UTF-8 byte-order mark (BOM); ignored", "warning", "bom")


def _data_error(path: str, e: ReadError) -> DataError:
    return DataError([Problem(path, line, fld, msg, code=code) for line, fld, msg, code in e.problems])


def load_tools(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Tool schemas from a JSON file (a list, or {"tools": [...]}), normalised; DataError naming the file."""
    try:
        return read_tool_file(Path(path), MAX_LINE_BYTES * 16 + 1)
    except ReadError as e:
        raise _data_error(str(Path(path)), e) from None


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

    def add(self, ln: Line) -> None:
        if ln.problem:
            self.problem(ln.line, "", *ln.problem)
            self.skipped += 1
            return
        try:
            ex, warn = self._example(ln)
        except Bad as e:
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

    def _example(self, ln: Line) -> tuple[Example, list]:
        found = detect_format(ln.obj)
        self.fmt = self.fmt or found
        if found is None and not self.forced:
            keys = ", ".join(shown(k) for k in sorted(ln.obj)[:20]) + (", ..." if len(ln.obj) > 20 else "") or "none"
            raise Bad(("", "unrecognised record: expected conversations, messages, prompt+completion "
                            f"or text (found keys: {keys})", "format"))
        if not self.forced and found not in (self.fmt, COMPATIBLE.get(self.fmt)):
            raise Bad(("", f"mixed formats: this line is {found!r} but the file is {self.fmt!r}", "mixed_format"))
        try:
            rec = parse_record(ln.obj, self.fmt, self.specs)
        except Bad as e:
            if self.forced and found and found not in (self.fmt, COMPATIBLE.get(self.fmt)):
                hint = f"this line looks like the {found!r} format, not {self.fmt!r}"
                e.items = (*e.items, ("", hint, "mixed_format"))
            raise
        final = rec.messages[-1]
        ex = Example(rec.messages[:-1], completion_text(final), True if rec.label is None else rec.label,
                     ln.line, ln.raw, final if "tool_calls" in final else None, rec.tools, text_prompt(ln.obj, self.fmt))
        return ex, rec.warnings

    def _is_duplicate(self, ex: Example) -> bool:
        key = example_key(ex.prompt, ex.completion, ex.tools)
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
    if msg := open_problem(path):
        raise _file_error(str(path), msg)
    file_tools = _file_tools(path, tools)
    hasher = hashlib.sha256()
    bom: list[Problem] = []
    try:
        with opened(path) as f:  # a link is followed, a FIFO refused
            lines = read_lines(path, f, hasher, lambda: bom.append(_bom_problem(str(path))))
            loader = _read(str(path), lines, format, file_tools)
    except ReadError as e:
        raise _data_error(str(path), e) from None
    loader.problems[:0] = bom
    loader.finish()
    fmt = loader.fmt or "unknown"
    ds = Dataset(path, fmt, loader.examples, loader.problems, loader.skipped, hasher.hexdigest(),
                 loader.tools, loader.tools_source)
    if strict and ds.errors:
        raise DataError(ds.problems)
    return ds


def _read(path: str, lines: Iterator[Line], format: str | None, tools: tuple) -> _Loader:
    """A loader fed every line; the format is chosen once DETECT_RECORDS records are in (or at the end)."""
    buffered: list[Line] = []
    loader = None
    for ln in lines:
        if loader is not None:
            loader.add(ln)
            continue
        buffered.append(ln)
        if sum(x.obj is not None for x in buffered) >= DETECT_RECORDS:
            loader = _start(path, format, buffered, tools)
    if loader is None:
        if not buffered:
            raise _file_error(path, "file has no records (only blank lines)")
        loader = _start(path, format, buffered, tools)
    return loader


def _start(path: str, format: str | None, buffered: list[Line], tools: tuple) -> _Loader:
    loader = _Loader(path, format or _choose_format(buffered), format is not None, tools)
    for ln in buffered:
        loader.add(ln)
    buffered.clear()
    return loader


# ---------------------------------------------------------------- stats, split, KTO weights


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
        "chars": percentiles(chars),
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
        from .template import encode_example

        encodings = (encode_example(tokenizer, ex) for ex in ds.examples)
        stats.update(token_stats(encodings, max_seq_len, getattr(tokenizer, "bos_token_id", None)))
    return stats


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