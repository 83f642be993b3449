"""The event log's schema, and the one fold of a run's events into its state.

Each line of events.jsonl is one JSON object: `type`, `step`, `time` and the fields of its type (the
TypedDicts below, one per type the trainer writes). `build` makes an event and checks its fields against
the schema (a programming error raises EventError), `encode` writes it as strict JSON (a NaN or inf
becomes null), and `parse` reads a line back as a reader must: a torn, garbage or huge line is None, and
the fields are not checked (anyone may have written the file). `RunState` folds a history of parsed
events, in constant memory, into what `tunedeck runs` and the app's Train screen show; `number` and
`integer` are its coercions of fields written by anyone.
"""

# No `from __future__ import annotations`: the TypedDicts' NotRequired fields must be real at class creation.

import json
import math
import numbers
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, Union, get_args, get_origin, get_type_hints

MAX_LINE = 1 << 20  # longer lines are skipped by readers, not parsed
TERMINAL = {"done": "finished", "stopped": "stopped", "error": "failed"}  # final event type -> run status
DURABLE = frozenset({"start", "checkpoint", "error", "stopped", "done"})  # fsynced as soon as written

Event = dict[str, Any]  # a parsed event: "type" is a str, every other field is as the line held it


class EventError(ValueError):
    """An event that does not match its type's schema (a bug in the code writing it)."""


class _Event(TypedDict):
    type: str
    step: int
    time: float


class StartEvent(_Event):
    method: str
    total_steps: int
    resumed_from: str | None
    trainable_params: int
    total_params: int
    train_examples: int
    valid_examples: int
    desirable: int
    undesirable: int
    batches_per_epoch: int
    backend: str
    dtype: str
    note: str
    model: str
    workers: int
    learning_rate: float
    pid: int
    data_sha256: str | None
    model_files: list[list[Any]]  # [name, size, mtime] of each weight file
    reference_cached: NotRequired[bool]  # KTO: the reference log-probs came from the cache
    reference_seconds: NotRequired[float]


class StepEvent(_Event):  # plus the memory readings (fields ending in _gb)
    loss: float
    lr: float
    tokens: int
    tokens_per_sec: float
    seq_tokens_per_sec: float
    tokens_per_sec_per_worker: float
    step_time: float
    grad_norm: float
    total_steps: int
    eta_sec: float
    rewards_chosen: NotRequired[float]  # KTO only; NaN (written null) for a batch without that label
    rewards_rejected: NotRequired[float]
    margin: NotRequired[float]
    kl: NotRequired[float]
    logps_chosen: NotRequired[float]
    logps_rejected: NotRequired[float]


class EvalEvent(_Event):  # plus any other val_* number
    val_loss: float


class CheckpointEvent(_Event):
    path: str
    pruned: NotRequired[list[str]]  # older checkpoints deleted (train.keep_checkpoints)


class ReferenceEvent(_Event):  # the KTO reference pass, before `start`; plus the memory readings (*_gb)
    done: int
    total: int
    rate: float
    eta_s: float
    workers: int


class WarningEvent(_Event):
    message: str
    signal: NotRequired[str]


class ErrorEvent(_Event):
    message: str
    kind: str


class StoppedEvent(_Event):
    signal: str
    checkpoint: str | None
    phase: NotRequired[str]  # "reference": stopped during the reference pass


class SampleEvent(_Event):  # core.samples: one held-out prompt's greedy answer at this step
    prompt: int  # index among the run's sampled prompts
    question: str  # the prompt's last user message (cut short)
    text: str
    valid: bool | None  # a well-formed tool call; None when the prompt's reference answer is not a call
    tokens: int  # tokens generated


class DoneEvent(_Event):
    adapters: str
    checkpoint: str | None
    seconds: float


SCHEMA: dict[str, type] = {
    "start": StartEvent, "step": StepEvent, "eval": EvalEvent, "checkpoint": CheckpointEvent,
    "reference": ReferenceEvent, "warning": WarningEvent, "error": ErrorEvent, "stopped": StoppedEvent,
    "sample": SampleEvent, "done": DoneEvent,
}


def _memory_reading(name: str) -> bool:
    return name.endswith("_gb")  # core.memory.readings: rss_gb, peak_memory_gb, ...


def _validation_number(name: str) -> bool:
    return name.startswith("val_")


#: The types that take number fields beyond those they list, named as these say.
MORE_NUMBERS: dict[str, Callable[[str], bool]] = {"step": _memory_reading, "reference": _memory_reading,
                                                  "eval": _validation_number}
_HINTS = {name: get_type_hints(cls) for name, cls in SCHEMA.items()}


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` has the type `hint` (numbers of any kind, numpy's included; NaN is a float)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float or hint is int:
        kind = numbers.Real if hint is float else numbers.Integral
        return isinstance(value, kind) and not isinstance(value, bool)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, h) for h in get_args(hint))
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, get_args(hint)[0]) for v in value)
    return isinstance(value, hint)


def problems(event: Event, parsed: bool = False) -> list[str]:
    """What is wrong with `event` against its type's schema: an unknown type, a missing, unknown or
    wrongly typed field. `parsed`: the event was read back from its line, where a NaN or inf was written null."""
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in SCHEMA:
        return [f"unknown event type {kind!r} (expected one of {', '.join(SCHEMA)})"]
    hints, more = _HINTS[kind], MORE_NUMBERS.get(kind)
    found = [f"{kind}: missing field {name!r}" for name in sorted(SCHEMA[kind].__required_keys__ - event.keys())]
    for name, value in event.items():
        hint = hints.get(name)
        if hint is None and more is not None and more(name):
            hint = float
        if hint is None:
            found.append(f"{kind}: unknown field {name!r}")
        elif not (_fits(value, hint) or (parsed and value is None and _fits(math.nan, hint))):
            found.append(f"{kind}.{name}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")
    return found


def build(type: str, step: int, **fields: Any) -> Event:
    """The event `type` at `step`, stamped with the time; EventError names every field that does not fit."""
    if reserved := {"type", "step", "time"} & fields.keys():
        raise EventError(f"{type}: {', '.join(sorted(reserved))} cannot be given as fields")
    event = {"type": type, "step": step, "time": round(time.time(), 3), **fields}
    if found := problems(event):
        raise EventError("; ".join(found))
    return event


def encode(event: Event) -> str:
    """`event` as one line of strict JSON (no newline): a NaN or inf at any depth is written as null."""
    try:
        return json.dumps(event, allow_nan=False, default=str)
    except ValueError:  # NaN/inf (e.g. KTO rewards of a batch without that label): null keeps it strict JSON
        return json.dumps(_finite(event), allow_nan=False, default=str)


def _finite(value: Any) -> Any:
    """`value` with every NaN/inf float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def parse(line: str) -> Event | None:
    """One event from a line, or None for garbage (too long, bad JSON, not an object, no string type)."""
    if len(line) > MAX_LINE:
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # ValueError: also an integer of over 4,300 digits
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event


# --- reading fields written by anyone ---------------------------------------------------------


def number(value: Any) -> int | float | None:
    """A finite number from an event field, as it was (an int stays an int), else None (missing, a bool,
    another type, NaN, inf): what keeps `runs --json` strict JSON."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return None


def real(value: Any) -> float | None:
    """`number(value)` as a float, or None (also for an int too large for one)."""
    n = number(value)
    try:
        return None if n is None else float(n)
    except OverflowError:
        return None


def integer(value: Any) -> int | None:
    """An int field (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _whole(value: Any, default: int) -> int:
    """A number field truncated to an int, else `default`."""
    n = number(value)
    return default if n is None else int(n)


# --- the fold ----------------------------------------------------------------------------------


@dataclass
class RunState:
    """A run's event history folded one event at a time (`apply`), in constant memory.

    A start event begins an attempt (the first, or a resume): it sets the method and total, and clears the
    outcome; a done, stopped or error event sets the outcome. Numbers are kept as the events wrote them."""

    method: str = ""
    step: int = 0  # a start event's step, then the highest step since
    total_steps: int = 0  # the latest start event's
    workers: int = 1  # data-parallel processes
    started: int | float | None = None  # the first attempt's first reference or start event
    attempt_started: int | float | None = None  # the latest attempt's first reference event, else its start
    updated: int | float | None = None  # the latest event's time
    last_loss: int | float | None = None
    last_val_loss: int | float | None = None
    best_val_loss: int | float | None = None
    error: str | None = None  # the latest error event's message ("" if it gave none)
    terminal: str | None = None  # the type of the latest done/stopped/error event since the latest start
    began: bool = False  # a start or step event was seen
    in_reference: bool = False  # a KTO reference pass is under way (reference events, no start yet)
    events: int = 0

    @property
    def outcome(self) -> str | None:
        """finished | stopped | failed, from the latest attempt's final event; None before one."""
        return TERMINAL.get(self.terminal) if self.terminal else None

    def apply(self, e: Event) -> None:
        kind = e.get("type")
        if (step := integer(e.get("step"))) is not None:
            self.step = step if kind == "start" else max(self.step, step)
        when = number(e.get("time"))
        self.events += 1
        if kind == "start":
            self.method = str(e.get("method", ""))
            self.total_steps = _whole(e.get("total_steps"), 0)
            self.workers = _whole(e.get("workers"), 1) or 1
            self.started = self.started or when
            if not self.in_reference:
                self.attempt_started = when
            self.terminal, self.began, self.in_reference = None, True, False
        elif kind == "reference":
            self.started = self.started or when
            if not self.in_reference:
                self.attempt_started = when
            self.in_reference = True
        elif kind == "step":
            self.began = True
            if (loss := number(e.get("loss"))) is not None:
                self.last_loss = loss
        elif kind == "eval" and (val := number(e.get("val_loss"))) is not None:
            self.last_val_loss = val
            if self.best_val_loss is None or val < self.best_val_loss:
                self.best_val_loss = val
        elif kind in TERMINAL:
            self.terminal, self.in_reference = kind, False
            if kind == "error":
                self.error = str(e.get("message", ""))
        if when is not None:
            self.updated = when
