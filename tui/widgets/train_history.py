"""A run's event history folded into what the Train screen shows, in bounded memory."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: The plotted series: the loss plot's, the KTO rewards plot's, and KL (its own plot: it is often 10x the rewards).
LOSS_SERIES = ("train loss", "val loss")
REWARD_SERIES = ("rewards_chosen", "rewards_rejected", "margin")
KL_SERIES = ("kl",)
KTO_SERIES = REWARD_SERIES + KL_SERIES
EMA_BETA = 0.9  # the smoothed loss: each point weighs 10% (about the last 10 plotted points)
TERMINAL = {"done": "finished", "stopped": "stopped", "error": "failed"}


def number(value: Any) -> float | None:
    """A finite number from an event field, or None (missing, wrong type, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Series:
    """(x, y) points, at most `cap` of them: when full, every other point is dropped and later
    points are kept at the doubled stride, so the whole history stays covered evenly."""

    def __init__(self, cap: int = 2000) -> None:
        self.cap = cap
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.stride = 1
        self._seen = 0

    def add(self, x: float, y: float) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.cap:
            self.xs, self.ys = self.xs[::2], self.ys[::2]
            self.stride *= 2

    def truncate(self, x_max: float) -> None:
        """Forget points after `x_max` (a run resumed from an earlier checkpoint redoes them)."""
        keep = sum(1 for x in self.xs if x <= x_max)
        del self.xs[keep:], self.ys[keep:]

    def __len__(self) -> int:
        return len(self.xs)


@dataclass
class RunHistory:
    """The state of a run as its events tell it. `status` is "waiting" until a start event, then
    "running" until a terminal event ("finished", "stopped", "failed"); a new start resets it."""

    status: str = "waiting"
    method: str = ""
    step: int = 0
    total: int = 0
    workers: int = 1  # data-parallel processes of the run
    started: float | None = None  # when the latest attempt began: its first reference event, else its start
    updated: float | None = None  # time of the latest event
    last: dict[str, float] = field(default_factory=dict)  # latest valid number of each step-event field
    val_loss: float | None = None
    best_val_loss: float | None = None
    val: dict[str, float] = field(default_factory=dict)  # the latest eval event's numbers (val_margin, ...)
    checkpoint: str | None = None
    error: str | None = None
    events: int = 0
    series: dict[str, Series] = field(default_factory=lambda: {n: Series() for n in LOSS_SERIES + KTO_SERIES})
    log: deque[str] = field(default_factory=lambda: deque(maxlen=500))  # lines not yet shown
    reference: dict[str, float | None] | None = None  # the KTO reference pass in progress: done, total, rate, eta_s

    def apply(self, e: dict[str, Any]) -> None:
        kind = str(e.get("type"))
        step = integer(e.get("step"))
        if step is not None and step >= 0:
            self.step = step if kind == "start" else max(self.step, step)
        if (t := number(e.get("time"))) is not None:
            self.updated = t
        self.events += 1
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(e, self.step)
        else:
            self.log.append(f"{kind} @{self.step} (unknown event type)")

    def _on_start(self, e: dict[str, Any], step: int) -> None:
        self.status = "running"
        self.error = None
        self.method = str(e.get("method", ""))
        self.total = max(integer(e.get("total_steps")) or 0, 0)
        self.workers = max(integer(e.get("workers")) or 1, 1)
        if self.reference is None:
            self.started = number(e.get("time"))
        self.reference = None
        for s in self.series.values():
            s.truncate(step)
        resumed = e.get("resumed_from")
        self.log.append(
            f"start: {self.method}, {self.total} steps, {e.get('train_examples', '?')} train / "
            f"{e.get('valid_examples', '?')} valid examples, {e.get('backend', '?')} {e.get('dtype', '')}"
            + (f"; resumed from {resumed}" if resumed else "")
        )

    def _on_reference(self, e: dict[str, Any], step: int) -> None:
        """Progress of the KTO reference pass, before the start event: it counts in the elapsed time,
        and its memory readings feed the gauges."""
        if self.reference is None:
            self.started = number(e.get("time"))
            self.log.append("computing the KTO reference log-probs (once, before step 1)…")
        done, total = integer(e.get("done")), integer(e.get("total"))
        self.reference = {"done": max(done or 0, 0), "total": max(total or 0, 0), "rate": number(e.get("rate")),
                          "eta_s": number(e.get("eta_s"))}
        self.last.update((k, v) for k, v in ((k, number(v)) for k, v in e.items() if k.endswith("_gb"))
                         if v is not None)

    def _on_step(self, e: dict[str, Any], step: int) -> None:
        self.last.update((k, v) for k, v in ((k, number(v)) for k, v in e.items() if k not in ("step", "time"))
                         if v is not None)
        if (total := integer(e.get("total_steps"))) is not None and total > 0:
            self.total = total
        if self.status == "waiting":
            self.status = "running"
        if (loss := number(e.get("loss"))) is not None:
            self.series["train loss"].add(step, loss)
        for name in KTO_SERIES:
            if (v := number(e.get(name))) is not None:
                self.series[name].add(step, v)
        every = max(1, self.total // 50)
        if step % every == 0 or step == self.total:
            lr = self.last.get("lr")
            self.log.append(f"step {step}/{self.total}  loss {fmt_number(loss)}  lr {fmt_number(lr, '.2e')}  "
                            f"{fmt_number(self.last.get('tokens_per_sec'), '.0f')} trained tok/s  "
                            f"{fmt_number(self.last.get('seq_tokens_per_sec'), '.0f')} seq tok/s")

    def _on_eval(self, e: dict[str, Any], step: int) -> None:
        if (v := number(e.get("val_loss"))) is None:
            return
        self.val = {k: x for k, x in ((k, number(x)) for k, x in e.items() if k.startswith("val_")) if x is not None}
        self.val_loss = v
        self.best_val_loss = v if self.best_val_loss is None else min(self.best_val_loss, v)
        self.series["val loss"].add(step, v)
        extra = "".join(f", {k.removeprefix('val_')} {fmt_number(self.val.get(k))}"
                        for k in ("val_margin", "val_reward_accuracy") if k in self.val)
        self.log.append(f"eval @{step}: val_loss {v:.4f}{extra}")

    def _on_checkpoint(self, e: dict[str, Any], step: int) -> None:
        self.checkpoint = str(e.get("path", ""))
        self.log.append(f"checkpoint @{step}: {self.checkpoint}")

    def _on_warning(self, e: dict[str, Any], step: int) -> None:
        self.log.append(f"warning: {e.get('message', '')}")

    def _on_error(self, e: dict[str, Any], step: int) -> None:
        self.reference = None
        self.status = "failed"
        self.error = str(e.get("message", "")) or "unknown error"
        self.log.append(f"ERROR ({e.get('kind', '?')}) @{step}: {self.error}")

    def _on_stopped(self, e: dict[str, Any], step: int) -> None:
        self.reference = None
        self.status = "stopped"
        self.log.append(f"stopped @{step} ({e.get('signal', '?')}); checkpoint {e.get('checkpoint')}")

    def _on_done(self, e: dict[str, Any], step: int) -> None:
        self.reference = None
        self.status = "finished"
        self.log.append(f"done @{step} in {fmt_number(number(e.get('seconds')), '.1f')} s; adapters in "
                        f"{e.get('adapters', 'adapters')}/")


def ema(ys: list[float], beta: float = EMA_BETA) -> list[float]:
    """The bias-corrected exponential moving average of `ys` (as TensorBoard's smoothing): the first
    points are not pulled towards 0."""
    out, avg = [], 0.0
    for n, y in enumerate(ys, 1):
        avg = beta * avg + (1 - beta) * y
        out.append(avg / (1 - beta**n))
    return out


def fmt_number(v: float | None, spec: str = ".4f") -> str:
    """`v` formatted, or "-" when missing."""
    return "-" if v is None else format(v, spec)
