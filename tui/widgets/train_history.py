"""A run's event history folded into what the Train screen shows, in bounded memory."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tunedeck.core.events import Event, RunState, integer, real

#: The plotted series: the loss plot's, the KTO rewards plot's, and KL (its own plot: it is often 10x the rewards).
LOSS_SERIES = ("train loss", "val loss")
REWARD_SERIES = ("rewards_chosen", "rewards_rejected", "margin")
KL_SERIES = ("kl",)
KTO_SERIES = REWARD_SERIES + KL_SERIES
EMA_BETA = 0.9  # the smoothed loss: each point weighs 10% (about the last 10 plotted points)
MAX_SAMPLE_PROMPTS = 64  # sample events naming a higher prompt index are ignored (the trainer writes at most 16)
SAMPLES_KEPT = 100  # answers kept per prompt, the newest
SAMPLE_CHARS = 4000  # of an answer's text shown, the rest cut (a default 64-token answer is a few hundred)


@dataclass(frozen=True)
class Sample:
    """One answer of a `sample` event: its step, text, tool-call validity (None: no call was due), tokens."""

    step: int
    text: str
    valid: bool | None
    tokens: int | None


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


class RunHistory:
    """The state of a run as its events tell it: the fold (core.events.RunState) and what only the screen
    needs (plotted series, the latest numbers for the gauges and stats, log lines not yet shown). `status` is
    "waiting" until a start or step event, then "running" until a final event ("finished", "stopped",
    "failed"); a new start resets it."""

    def __init__(self) -> None:
        self.state = RunState()
        self.last: dict[str, float] = {}  # latest valid number of each step-event field (and reference *_gb)
        self.val: dict[str, float] = {}  # the latest eval event's numbers (val_margin, ...)
        self.checkpoint: str | None = None
        self.series: dict[str, Series] = {n: Series() for n in LOSS_SERIES + KTO_SERIES}
        self.log: deque[str] = deque(maxlen=500)  # lines not yet shown
        self._reference: dict[str, float | None] = {}  # the reference pass's latest progress
        self._step_total: int | None = None  # the step events' total since the latest start (they carry it too)
        self.samples: dict[int, deque[Sample]] = {}  # prompt index -> its answers, oldest first (core.samples)
        self.questions: dict[int, str] = {}  # prompt index -> its last user message

    @property
    def status(self) -> str:
        return self.state.outcome or ("running" if self.state.began else "waiting")

    @property
    def method(self) -> str:
        return self.state.method

    @property
    def step(self) -> int:
        return max(self.state.step, 0)

    @property
    def total(self) -> int:
        return max(self.state.total_steps if self._step_total is None else self._step_total, 0)

    @property
    def workers(self) -> int:
        """Data-parallel processes of the run."""
        return max(self.state.workers, 1)

    @property
    def started(self) -> float | None:
        """When the latest attempt began: its first reference event, else its start."""
        return real(self.state.attempt_started)

    @property
    def updated(self) -> float | None:
        """The time of the latest event."""
        return real(self.state.updated)

    @property
    def val_loss(self) -> float | None:
        return real(self.state.last_val_loss)

    @property
    def best_val_loss(self) -> float | None:
        return real(self.state.best_val_loss)

    @property
    def error(self) -> str | None:
        """Why the run failed, while it is failed."""
        return (self.state.error or "unknown error") if self.status == "failed" else None

    @property
    def events(self) -> int:
        return self.state.events

    @property
    def reference(self) -> dict[str, float | None] | None:
        """The KTO reference pass in progress (done, total, rate, eta_s), else None."""
        return self._reference if self.state.in_reference else None

    def apply(self, e: Event) -> None:
        kind = str(e.get("type"))
        if kind == "reference" and not self.state.in_reference:
            self.log.append("computing the KTO reference log-probs (once, before step 1)…")
        self.state.apply(e)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(e, self.step)
        else:
            self.log.append(f"{kind} @{self.step} (unknown event type)")

    def _on_start(self, e: Event, step: int) -> None:
        self._step_total = None
        for s in self.series.values():
            s.truncate(step)
        for answers in self.samples.values():  # a resume from an earlier checkpoint samples those steps again
            while answers and answers[-1].step > step:
                answers.pop()
        resumed = e.get("resumed_from")
        self.log.append(
            f"start: {self.method}, {self.total} steps, {e.get('train_examples', '?')} train / "
            f"{e.get('valid_examples', '?')} valid examples, {e.get('backend', '?')} {e.get('dtype', '')}"
            + (f"; resumed from {resumed}" if resumed else "")
        )

    def _on_reference(self, e: Event, step: int) -> None:
        """Progress of the KTO reference pass, before the start event (it counts in the elapsed time: see
        RunState.attempt_started); its memory readings feed the gauges."""
        done, total = integer(e.get("done")), integer(e.get("total"))
        self._reference = {"done": max(done or 0, 0), "total": max(total or 0, 0), "rate": real(e.get("rate")),
                           "eta_s": real(e.get("eta_s"))}
        self.last.update((k, v) for k, v in ((k, real(v)) for k, v in e.items() if k.endswith("_gb")) if v is not None)

    def _on_step(self, e: Event, step: int) -> None:
        self.last.update((k, v) for k, v in ((k, real(v)) for k, v in e.items() if k not in ("step", "time"))
                         if v is not None)
        if (total := integer(e.get("total_steps"))) is not None and total > 0:
            self._step_total = total
        if (loss := real(e.get("loss"))) is not None:
            self.series["train loss"].add(step, loss)
        for name in KTO_SERIES:
            if (v := real(e.get(name))) is not None:
                self.series[name].add(step, v)
        every = max(1, self.total // 50)
        if step % every == 0 or step == self.total:
            lr = self.last.get("lr")
            self.log.append(f"step {step}/{self.total}  loss {fmt_number(loss)}  lr {fmt_number(lr, '.2e')}  "
                            f"{fmt_number(self.last.get('tokens_per_sec'), '.0f')} trained tok/s  "
                            f"{fmt_number(self.last.get('seq_tokens_per_sec'), '.0f')} seq tok/s")

    def _on_eval(self, e: Event, step: int) -> None:
        if (v := real(e.get("val_loss"))) is None:
            return
        self.val = {k: x for k, x in ((k, real(x)) for k, x in e.items() if k.startswith("val_")) if x is not None}
        self.series["val loss"].add(step, v)
        extra = "".join(f", {k.removeprefix('val_')} {fmt_number(self.val.get(k))}"
                        for k in ("val_margin", "val_reward_accuracy") if k in self.val)
        self.log.append(f"eval @{step}: val_loss {v:.4f}{extra}")

    def _on_sample(self, e: Event, step: int) -> None:
        prompt = integer(e.get("prompt"))
        if prompt is None or not 0 <= prompt < MAX_SAMPLE_PROMPTS or (at := integer(e.get("step"))) is None:
            return
        valid = e.get("valid") if isinstance(e.get("valid"), bool) else None
        answers = self.samples.setdefault(prompt, deque(maxlen=SAMPLES_KEPT))
        answers.append(Sample(at, str(e.get("text", ""))[:SAMPLE_CHARS], valid, integer(e.get("tokens"))))
        if isinstance(question := e.get("question"), str):
            self.questions[prompt] = question

    def _on_checkpoint(self, e: Event, step: int) -> None:
        self.checkpoint = str(e.get("path", ""))
        self.log.append(f"checkpoint @{step}: {self.checkpoint}")

    def _on_warning(self, e: Event, step: int) -> None:
        self.log.append(f"warning: {e.get('message', '')}")

    def _on_error(self, e: Event, step: int) -> None:
        self.log.append(f"ERROR ({e.get('kind', '?')}) @{step}: {self.error}")

    def _on_stopped(self, e: Event, step: int) -> None:
        self.log.append(f"stopped @{step} ({e.get('signal', '?')}); checkpoint {e.get('checkpoint')}")

    def _on_done(self, e: Event, step: int) -> None:
        self.log.append(f"done @{step} in {fmt_number(real(e.get('seconds')), '.1f')} s; adapters in "
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
