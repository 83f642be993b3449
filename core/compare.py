"""Side by side runs: each run's curves (by step and by trained tokens), its final and best numbers, and the
config keys whose values differ between the runs.

A run's events (core.runs.read_events) are folded into series keyed by step: a start event (the first
attempt or a resume) forgets the points after its step, since a resumed run redoes them, and a later event
for a step replaces an earlier one. Trained tokens are the step events' `tokens` summed up to each step
(with `train.report_every` > 1 only the reported steps are counted). Reward accuracy is an eval event's
`val_reward_accuracy`, where the run's events hold one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C
from . import events as ev
from . import runs
from .rundir import RunDir

#: series name -> (event type, field)
FIELDS: dict[str, tuple[str, str]] = {
    "loss": ("step", "loss"),
    "margin": ("step", "margin"),
    "val_loss": ("eval", "val_loss"),
    "reward_accuracy": ("eval", "val_reward_accuracy"),
}


class CompareError(ValueError):
    """Runs that cannot be compared (fewer than two, a directory that is not a run, a config that does not load)."""


@dataclass
class RunCurves:
    """One run's series (name -> {step: value}) and the trained tokens of each step."""

    points: dict[str, dict[int, float]] = field(default_factory=lambda: {name: {} for name in FIELDS})
    step_tokens: dict[int, int] = field(default_factory=dict)

    def apply(self, e: ev.Event) -> None:
        kind, step = e.get("type"), ev.integer(e.get("step"))
        if step is None:
            return
        if kind == "start":  # a resume redoes the steps after its checkpoint
            for pts in (*self.points.values(), self.step_tokens):
                for s in [s for s in pts if s > step]:
                    del pts[s]
            return
        for name, (source, key) in FIELDS.items():
            if kind == source and (value := ev.real(e.get(key))) is not None:
                self.points[name][step] = value
        if kind == "step" and (tokens := ev.integer(e.get("tokens"))) is not None:
            self.step_tokens[step] = tokens

    def tokens_at(self) -> dict[int, int]:
        """Cumulative trained tokens through each step that any series or step event names (0 before any)."""
        steps = sorted({*self.step_tokens, *(s for pts in self.points.values() for s in pts)})
        total, out = 0, {}
        for s in steps:
            total += self.step_tokens.get(s, 0)
            out[s] = total
        return out

    def series(self, name: str, by_tokens: bool = False) -> tuple[list[float], list[float]]:
        """(xs, ys) of series `name` in step order; x is the step or the trained tokens through it."""
        pts = sorted(self.points[name].items())
        at = self.tokens_at() if by_tokens else {}
        return [float(at[s] if by_tokens else s) for s, _ in pts], [v for _, v in pts]


@dataclass
class RunSummary:
    """A compared run: where it is, its label (its directory's name, or the path given where names repeat),
    its listing (status, method, steps) and its curves."""

    run_dir: Path
    label: str
    info: runs.RunInfo
    curves: RunCurves

    def final(self, name: str) -> float | None:
        pts = self.curves.points[name]
        return pts[max(pts)] if pts else None

    def best(self, name: str) -> float | None:
        """The lowest loss / val_loss, the highest margin / reward accuracy."""
        values = list(self.curves.points[name].values())
        if not values:
            return None
        return min(values) if "loss" in name else max(values)

    @property
    def tokens_trained(self) -> int:
        return sum(self.curves.step_tokens.values())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "label": self.label, "status": self.info.status,
                               "method": self.info.method, "step": self.info.step,
                               "total_steps": self.info.total_steps}
        for name in FIELDS:
            out[f"final_{name}"], out[f"best_{name}"] = self.final(name), self.best(name)
        out["tokens_trained"] = self.tokens_trained
        return out


@dataclass
class Comparison:
    runs: list[RunSummary]
    config_diff: dict[str, list[Any]]  # dotted key -> each run's value, in the runs' order

    def to_json(self) -> dict[str, Any]:
        return {"runs": [r.to_json() for r in self.runs], "config_diff": self.config_diff}


def read_curves(run_dir: Path) -> RunCurves:
    curves = RunCurves()
    for e in runs.read_events(run_dir):
        curves.apply(e)
    return curves


def load_config(run_dir: Path) -> C.Config:
    """The run's frozen config; CompareError naming the file and its first problem if it does not load."""
    try:
        cfg, _ = C.load(RunDir(run_dir).config)
    except C.ConfigError as e:
        raise CompareError(str(e).splitlines()[0]) from None
    return cfg


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def config_diff(configs: list[C.Config]) -> dict[str, list[Any]]:
    """The dotted keys (in the config's order) whose values are not the same in every config, with each value."""
    out: dict[str, list[Any]] = {}
    for key in C.FIELD_TYPES:
        values = [C.get_value(cfg, key) for cfg in configs]
        if not all(_same(values[0], v) for v in values[1:]):
            out[key] = values
    return out


def check_run_dirs(run_dirs: list[Path]) -> None:
    """CompareError for fewer than two runs, a directory given twice, or one that is not a run."""
    if len(run_dirs) < 2:
        raise CompareError(f"compare needs at least two run directories (got {len(run_dirs)})")
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        if not RunDir(d).is_run():
            raise CompareError(f"{d} is not a run directory (no config.toml)")
        key = d.resolve()
        if key in seen:
            raise CompareError(f"{d} is given twice (as {seen[key]})")
        seen[key] = d


def labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or the path as given where two runs share a name."""
    names = [d.name or str(d) for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs, strict=True)]


def compare(run_dirs: list[Path]) -> Comparison:
    """Summaries of two or more runs and their config diff; CompareError on bad input."""
    run_dirs = [Path(d) for d in run_dirs]
    check_run_dirs(run_dirs)
    configs = [load_config(d) for d in run_dirs]
    summaries = [RunSummary(d, label, runs.run_info(d), read_curves(d))
                 for d, label in zip(run_dirs, labels(run_dirs), strict=True)]
    return Comparison(summaries, config_diff(configs))
