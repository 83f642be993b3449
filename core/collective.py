"""The worker group of a data-parallel run, and the small host-side sums its workers exchange.

Ranks started by `mlx.launch` find their group from its environment: the ring backend (CPUs, Macs over
Ethernet/Thunderbolt), JACCL, or NCCL on NVIDIA GPUs (`NCCL_HOST_IP`/`NCCL_PORT`). NCCL reduces only
on CUDA streams, so there the bookkeeping sums (step, metrics, stop flags, reference log-probs, the
adapter broadcast) run on the GPU in float32; elsewhere on the CPU stream in float64.
"""

from __future__ import annotations

import os
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten


def uses_nccl() -> bool:
    """Whether this process was started as a rank of an NCCL group (mlx.launch --backend nccl)."""
    return bool(os.environ.get("NCCL_HOST_IP")) and bool(getattr(mx, "cuda", None) and mx.cuda.is_available())


def init_group() -> mx.distributed.Group:
    """This process's group: a group of one unless mlx.launch started it as a rank."""
    return mx.distributed.init(backend="nccl" if uses_nccl() else "any")


def stream() -> mx.Stream | mx.Device:
    """Where the bookkeeping all_sums run: NCCL needs a GPU stream; the other backends use the CPU."""
    return mx.gpu if uses_nccl() else mx.cpu


def host_sum(values: np.ndarray, group: mx.distributed.Group) -> np.ndarray:
    """Element-wise sum of a host vector over the workers, summed in float64 where the backend allows it
    (float32 under NCCL) and returned in the vector's own dtype."""
    values = np.asarray(values)
    if group.size() == 1 or values.size == 0:
        return values
    summed = mx.distributed.all_sum(mx.array(values, dtype=mx.float32 if uses_nccl() else mx.float64),
                                    group=group, stream=stream())
    return np.array(summed).astype(values.dtype)


def broadcast(array: mx.array, group: mx.distributed.Group) -> mx.array:
    """Rank 0's array on every worker (an all_sum with zeros from the others: exact)."""
    return mx.distributed.all_sum(array if group.rank() == 0 else mx.zeros_like(array), group=group, stream=stream())


def sync_from_rank0(model: nn.Module, optimizer: optim.Optimizer, step: int, restored: bool,
                    group: mx.distributed.Group) -> int:
    """Every worker starts from rank 0's adapter, step and (when rank 0 `restored` a checkpoint) optimizer
    state: rank 0 alone picks and reads the checkpoint, so the others need not see the run directory's
    checkpoints at all. Returns rank 0's step."""
    rank0 = group.rank() == 0
    step_sum, restored_any = host_sum(np.array([step, restored] if rank0 else [0, 0], dtype=np.float64), group)

    def everywhere(tree: Any) -> list[tuple[str, mx.array]]:
        # sorted: a tree loaded from a checkpoint and one made by optimizer.init list their keys differently
        return [(k, broadcast(v, group)) for k, v in sorted(tree_flatten(tree))]

    model.load_weights(everywhere(model.trainable_parameters()), strict=False)
    if restored_any:
        if not rank0:
            optimizer.init(model.trainable_parameters())
        optimizer.state = tree_unflatten(everywhere(optimizer.state))
    mx.eval(model.parameters(), optimizer.state)
    return int(step_sum)
