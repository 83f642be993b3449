"""Independent computations the tests check tunedeck's against (they are not used by tunedeck itself)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from tunedeck.core.losses import token_logps


def sequence_logps(model: nn.Module, tokens: mx.array, mask: mx.array) -> mx.array:
    """Sum of log-probs of the masked (completion) tokens of each sequence, from the logits at every position
    of a padded batch (batching.pad). mask is over targets [B, L-1]."""
    logits = model(tokens[:, :-1])
    return (token_logps(logits, tokens[:, 1:]) * mask).sum(axis=-1)
