"""Gradient checkpointing one transformer layer at a time: activations bounded by a single layer's.

mlx-lm's `grad_checkpoint` wraps each layer in `mx.checkpoint`, which asks MLX to recompute the layer
during the backward pass. But the step stays one lazy graph and MLX's scheduler may run those
recomputations long before their gradients are needed: on CUDA a 7B 4-bit step at 2 x 1024 peaked at
~17 GB with it against ~22.5 GB without (bench/results/h100_memory_probe.txt), for mlx-lm and tunedeck
alike. Here the forward keeps only each layer's input; the loss and its gradient with respect to the
final hidden states are evaluated; then the backward runs from the top layer down, evaluating each
layer's recomputed forward, its adapter gradients and its input cotangent before moving on. At most
one layer's activations are alive, whatever the scheduler does. The price is one evaluation per layer
(no whole-step `mx.compile`).

Used for models whose trainable parameters all sit in `model.model.layers` and whose layers take
(hidden, mask, cache) with a plain causal mask (the llama/mistral/qwen family, without sliding
windows). The result equals `nn.value_and_grad` on the whole model up to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_attention_mask

from .losses import PLAIN_HEAD, hidden_logps


def stepwise_forward_ok(model: nn.Module) -> bool:
    """Whether `forward` can run this model's layers one at a time (llama/mistral/qwen, no sliding window)."""
    inner = getattr(model, "model", None)
    return (getattr(model, "model_type", None) in PLAIN_HEAD and inner is not None and hasattr(inner, "layers")
            and getattr(inner, "swa_idx", None) is None and getattr(inner, "pipeline_size", 1) == 1)


def supported(model: nn.Module) -> bool:
    """Whether `value_and_grad` can run this model layer by layer."""
    return stepwise_forward_ok(model) and all(
        k.startswith("model.layers.") for k, _ in tree_flatten(model.trainable_parameters()))


def forward(model: nn.Module, inputs: mx.array, caches: list[Any] | None = None,
            keep_inputs: bool = False) -> tuple[mx.array, list[mx.array]]:
    """model.model's forward, evaluated one layer at a time: (final hidden states before the norm, the
    layers' inputs if `keep_inputs`). Evaluating per layer also bounds what the backend holds for the
    duration of one evaluation (on CUDA, temporaries such as dequantized weights live until it ends)."""
    inner = model.model
    hidden = inner.embed_tokens(inputs)
    mask = create_attention_mask(hidden, caches[0] if caches else None)
    saved = []
    for i, layer in enumerate(inner.layers):
        if keep_inputs:
            saved.append(hidden)
        hidden = layer(hidden, mask, cache=None if caches is None else caches[i])
        mx.eval(hidden)
    return hidden, saved


def sequence_logps(model: nn.Module, tokens: mx.array, positions: mx.array, targets: mx.array,
                   mask: mx.array) -> mx.array:
    """losses.packed_logps (no gradient) with the forward evaluated one layer at a time."""
    hidden = model.model.norm(forward(model, tokens[:, :-1])[0])
    return hidden_logps(model, hidden, positions, targets, mask).sum(axis=-1)


@dataclass
class Tape:
    """A forward evaluated one layer at a time, kept for `backward`: the final hidden states (before the
    norm) and each layer's input."""

    hidden: mx.array | None  # None once `backward` has used the tape up
    inputs: list[mx.array | None]

    def normed(self, model: nn.Module) -> mx.array:
        """The final normed hidden states, without gradient."""
        return mx.stop_gradient(model.model.norm(self.hidden))


def record(model: nn.Module, inputs: mx.array, caches: list[Any] | None = None) -> Tape:
    """The forward of `value_and_grad`, for a caller that runs something between it and `backward`.
    `caches` are per-layer cache stand-ins passed to the forward only (core.prefix_kl's recorders)."""
    return Tape(*forward(model, inputs, caches, keep_inputs=True))


def backward(model: nn.Module, tape: Tape,
             loss_on_hidden: Callable[[mx.array], tuple[mx.array, Any]]) -> tuple[tuple[mx.array, Any], dict[str, Any]]:
    """((loss, aux), gradients) of `loss_on_hidden` on the recorded forward, over the trainable parameters:
    the loss and its cotangent at the final hidden states, then each layer from the top down. The tape is
    used up (each layer's input is dropped once its turn is done)."""
    inner = model.model
    layers = inner.layers
    (loss, aux), cotangent = mx.value_and_grad(lambda h: loss_on_hidden(inner.norm(h)))(tape.hidden)
    mx.eval(loss, aux, cotangent)
    saved, tape.inputs, tape.hidden = tape.inputs, [], None  # freed as the backward goes down

    grads: list[Any] = [None] * len(layers)
    for i in reversed(range(len(layers))):
        layer, params = layers[i], layers[i].trainable_parameters()

        def projected(p: Any, x: mx.array, layer: nn.Module = layer, cot: mx.array = cotangent) -> mx.array:
            layer.update(p)
            return (layer(x, "causal") * cot).astype(mx.float32).sum()  # its gradient is the layer's VJP

        if tree_flatten(params):
            grads[i], cotangent = mx.grad(projected, argnums=(0, 1))(params, saved[i])
        else:  # a layer without adapters (lora.num_layers < all): only the cotangent passes through
            grads[i], cotangent = params, mx.grad(projected, argnums=1)(params, saved[i])
        layer.update(params)
        saved[i] = None
        mx.eval(grads[i], cotangent)
    tree = model.trainable_parameters()
    tree["model"]["layers"] = grads
    return (loss, aux), tree


def value_and_grad(model: nn.Module, inputs: mx.array, loss_on_hidden: Callable[[mx.array], tuple[mx.array, Any]],
                   caches: list[Any] | None = None) -> tuple[tuple[mx.array, Any], dict[str, Any]]:
    """((loss, aux), gradients) of `loss_on_hidden(model.model(inputs))` over the trainable parameters.

    `loss_on_hidden` takes the final (normed) hidden states [B, L, H] and returns (scalar loss, aux).
    Everything returned is already evaluated.
    """
    return backward(model, record(model, inputs, caches), loss_on_hidden)
