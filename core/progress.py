"""A plain-text progress line for headless training (no Rich: core stays free of UI libraries)."""

from __future__ import annotations

import math
from typing import Any, TextIO


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressPrinter:
    """Turns trainer events into a progress bar (TTY, redrawn in place) or one line per event (pipes)."""

    def __init__(self, out: TextIO, width: int = 24) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self._open = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step":
            total = event.get("total_steps") or 1
            done = min(event["step"] / total, 1.0)
            bar = "#" * int(done * self.width)
            line = (f"[{bar:<{self.width}}] step {event['step']}/{total} loss {event['loss']:.4f} "
                    f"{event['tokens_per_sec']:.0f} tok/s ETA {fmt_duration(event.get('eta_sec', float('nan')))}")
            if self.tty:
                self.out.write("\r" + line + "\x1b[K")
                self._open = True
            else:
                self.out.write(line + "\n")
        else:
            self._newline()
            detail = {k: v for k, v in event.items() if k not in ("type", "step", "time")}
            if kind == "eval":
                text = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in detail.items())
            elif kind == "start":
                text = (f"{detail.get('method')} on {detail.get('train_examples')} examples, "
                        f"{detail.get('total_steps')} steps, {detail.get('trainable_params', 0):,} trainable params "
                        f"({detail.get('note')})")
            else:
                text = str(detail.get("message") or detail.get("path") or detail.get("checkpoint") or "")
            self.out.write(f"{kind} @ step {event.get('step')}: {text}\n")
        self.out.flush()

    def _newline(self) -> None:
        if self._open:
            self.out.write("\n")
            self._open = False

    def close(self) -> None:
        self._newline()
        self.out.flush()
