"""Test-only fault injection, read from TUNEDECK_FAULT: comma-separated NAME:VALUE items, e.g. "nan_loss:5".

    nan_loss:K, inf_loss:K   step K's loss times NaN / inf (its micro-batches' loss weights, set on the host)
    nan_grad:K               step K's gradients NaN (its accumulation starts from NaN instead of nothing)
    step_sleep:S             S seconds of sleep after each step, so that a signal lands mid-run
    ref_sleep:S              the same after each batch of the KTO reference pass
    ckpt_pause:S             after each part of a checkpoint write, `ckpt-wrote NAME` on stdout, then S seconds

Every fault acts outside the compiled training step, through its ordinary inputs: the step has no test-only one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, TypeVar

import mlx.core as mx
from mlx.utils import tree_map

ENV = "TUNEDECK_FAULT"
B = TypeVar("B")


def fault(name: str) -> str | None:
    """The value of fault `name` in TUNEDECK_FAULT, or None when it is not set."""
    for item in os.environ.get(ENV, "").split(","):
        key, _, value = item.partition(":")
        if key == name:
            return value
    return None


def pause(name: str) -> None:
    """Sleep for the seconds of fault `name` (step_sleep, ref_sleep), if it is set."""
    if seconds := float(fault(name) or 0):
        time.sleep(seconds)


def ckpt_pause(name: str) -> None:
    """ckpt_pause:S: announce a written part of a checkpoint (train.log), then sleep S seconds."""
    if seconds := float(fault("ckpt_pause") or 0):
        print(f"ckpt-wrote {name}", flush=True)
        time.sleep(seconds)


def _at(name: str, step: int) -> bool:
    value = fault(name)
    return value is not None and int(value) == step


def poison_loss(batch: B, step: int) -> B:
    """nan_loss:K / inf_loss:K: at step K the batch with its loss weight times NaN / inf; else the batch itself."""
    for name, factor in (("nan_loss", float("nan")), ("inf_loss", float("inf"))):
        if _at(name, step):
            return dataclasses.replace(batch, weight=batch.weight * factor)  # type: ignore[type-var]
    return batch


def poison_gradients(step: int, params: Any) -> Any | None:
    """nan_grad:K: at step K a NaN for every trainable parameter, to start the gradient accumulation from
    (the loss stays finite, the gradients are not); else None, which starts it from nothing."""
    if _at("nan_grad", step):
        return tree_map(lambda p: mx.full(p.shape, float("nan"), dtype=p.dtype), params)
    return None
