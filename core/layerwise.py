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

Quantized bases (QLoRA): with model.quantized_matmul = "dequantize" (core.dequantize), each layer's
evaluation multiplies by its weights dequantized inside it (one layer's copy at a time): 4-bit 2 x 1,024
checkpointed SFT on an H200 trains 2.56x faster this way (h200_q4_b2_s1024_gc*.txt).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import dequantize
from .layer_compile import CompiledLayers, Recorder
from .losses import LLAMA_BLOCK, PLAIN_HEAD, head, hidden_logps, last_block_at, token_logps

_COMPILED = "tunedeck_compiled_layers"  # the model's CompiledLayers, set by `use_compiled`
HEAD_ELEMENTS = 1 << 27  # logits at once in `head_logps` (0.5 GB in float32): 2 rows of 2,048 x 32,768


def stepwise_forward_ok(model: nn.Module) -> bool:
    """Whether `forward` can run this model's layers one at a time (llama/mistral/qwen, no sliding window)."""
    inner = getattr(model, "model", None)
    return (getattr(model, "model_type", None) in PLAIN_HEAD and inner is not None and hasattr(inner, "layers")
            and getattr(inner, "swa_idx", None) is None and getattr(inner, "pipeline_size", 1) == 1)


def supported(model: nn.Module) -> bool:
    """Whether `value_and_grad` can run this model layer by layer."""
    return stepwise_forward_ok(model) and all(
        k.startswith("model.layers.") for k, _ in tree_flatten(model.trainable_parameters()))


def use_compiled(model: nn.Module, on: bool) -> None:
    """Whether this model's layer-by-layer forwards and backwards run compiled per-layer functions
    (core.layer_compile; train.compile under train.grad_checkpoint)."""
    setattr(model, _COMPILED, CompiledLayers(dequantize.dequantizing) if on else None)


def causal(model: nn.Module, layer: nn.Module, hidden: mx.array, cache: Any = None) -> mx.array:
    """layer(hidden, "causal", cache) for a cache that is None or a Recorder: compiled if the model asks for it."""
    compiled = getattr(model, _COMPILED, None)
    if compiled is not None:
        return compiled.forward(layer, dequantize.wants(model), hidden, cache)
    with dequantize.dequantized(model, layer):
        return layer(hidden, "causal", cache=cache)


_EVALUATED: dict[tuple[type, bool], type] = {}


def _evaluated(cls: type, on: bool) -> type:
    """A subclass of block class `cls` whose call evaluates its output (and dequantizes, if `on`)."""
    if (cls, on) not in _EVALUATED:
        def __call__(self: nn.Module, *args: Any, **kwargs: Any) -> mx.array:
            with dequantize.dequantizing(self, on):
                out = cls.__call__(self, *args, **kwargs)
                mx.eval(out)
            return out

        _EVALUATED[cls, on] = type(f"Evaluated{cls.__name__}", (cls,), {"__call__": __call__})
    return _EVALUATED[cls, on]


def by_layer(model: nn.Module) -> Any:
    """A context for forwards without gradient (validation) in which every layer call is its own evaluation
    (and dequantizes, as `dequantized`): the whole-model code paths, bounded as `forward` is. The last block,
    which core.losses.hidden_at runs piece by piece, is evaluated with what follows it."""
    on = dequantize.wants(model)
    return dequantize.retyped([(layer, _evaluated(type(layer), on)) for layer in model.model.layers])


def forward(model: nn.Module, inputs: mx.array, caches: list[Any] | None = None, keep_inputs: bool = False,
            beside: Callable[[int, nn.Module], mx.array] | None = None) -> tuple[mx.array, list[mx.array]]:
    """model.model's forward, evaluated one layer at a time: (final hidden states before the norm, the
    layers' inputs if `keep_inputs`). Evaluating per layer also bounds what the backend holds for the
    duration of one evaluation (on CUDA, temporaries such as dequantized weights live until it ends).
    `beside(i, layer)`, called after layer i, builds more of that layer's work (core.prefix_kl's KL completions),
    evaluated with it: one evaluation, and (eagerly) one dequantized copy of its weights, for both."""
    from mlx_lm.models.base import create_attention_mask  # mlx_lm's package loads transformers: seconds

    inner = model.model
    hidden = inner.embed_tokens(inputs)
    mask = create_attention_mask(hidden, caches[0] if caches else None)
    saved = []
    plain = isinstance(mask, str) and mask == "causal" and all(c is None or type(c) is Recorder for c in caches or [])
    shared = beside is not None and getattr(model, _COMPILED, None) is None  # one dequantized copy for both
    for i, layer in enumerate(inner.layers):
        if keep_inputs:
            saved.append(hidden)
        cache = None if caches is None else caches[i]
        with dequantize.dequantized(model, layer) if shared else nullcontext():
            if plain:
                hidden = causal(model, layer, hidden, cache)
            else:
                with dequantize.dequantized(model, layer):
                    hidden = layer(hidden, mask, cache=cache)
            mx.eval(hidden, beside(i, layer) if beside is not None else [])
    return hidden, saved


def sequence_logps(model: nn.Module, tokens: mx.array, positions: mx.array, targets: mx.array,
                   mask: mx.array) -> mx.array:
    """losses.packed_logps (no gradient) evaluated one layer at a time; as losses.hidden_at, the last llama
    block runs its queries and MLP at the trained positions only."""
    inner = model.model
    if getattr(model, "model_type", None) not in LLAMA_BLOCK:
        hidden = inner.norm(forward(model, tokens[:, :-1])[0])
        return hidden_logps(model, hidden, positions, targets, mask).sum(axis=-1)
    hidden = inner.embed_tokens(tokens[:, :-1])
    for layer in inner.layers[:-1]:
        hidden = causal(model, layer, hidden)
        mx.eval(hidden)
    with dequantize.dequantized(model, inner.layers[-1]):
        hidden = last_block_at(model, hidden, positions)
        mx.eval(hidden)
    return head_logps(model, hidden, targets, mask)


def head_logps(model: nn.Module, hidden: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
    """Summed masked log-probs [B] of `targets` [B, K] from final normed hidden states [B, K, H], without
    gradient, evaluated a few rows at a time: at most HEAD_ELEMENTS logits at once (the reference pass's
    batches are twice the step's, and their logits would otherwise set the run's peak)."""
    rows = max(1, HEAD_ELEMENTS // max(1, targets.shape[1] * int(model.args.vocab_size)))
    parts = []
    for r in range(0, targets.shape[0], rows):
        part = (token_logps(head(model, hidden[r : r + rows]), targets[r : r + rows]) * mask[r : r + rows]).sum(axis=-1)
        mx.eval(part)
        parts.append(part)
    return mx.concatenate(parts)


@dataclass
class Tape:
    """A forward evaluated one layer at a time, kept for `backward`: the final hidden states (before the
    norm) and each layer's input."""

    hidden: mx.array | None  # None once `backward` has used the tape up
    inputs: list[mx.array | None]

    def normed(self, model: nn.Module) -> mx.array:
        """The final normed hidden states, without gradient."""
        return mx.stop_gradient(model.model.norm(self.hidden))


def record(model: nn.Module, inputs: mx.array, caches: list[Any] | None = None,
           beside: Callable[[int, nn.Module], mx.array] | None = None) -> Tape:
    """The forward of `value_and_grad`, for a caller that runs something between it and `backward`.
    `caches` are per-layer cache stand-ins passed to the forward only (core.prefix_kl's recorders); `beside`
    as `forward`'s."""
    return Tape(*forward(model, inputs, caches, keep_inputs=True, beside=beside))


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
    compiled = getattr(model, _COMPILED, None)
    for i in reversed(range(len(layers))):
        layer, params = layers[i], layers[i].trainable_parameters()
        if compiled is not None:
            grads[i], cotangent = compiled.backward(layer, dequantize.wants(model), saved[i], cotangent)
            saved[i] = None
            mx.eval(grads[i], cotangent)
            continue

        def projected(p: Any, x: mx.array, layer: nn.Module = layer, cot: mx.array = cotangent) -> mx.array:
            layer.update(p)
            return (layer(x, "causal") * cot).astype(mx.float32).sum()  # its gradient is the layer's VJP

        with dequantize.dequantized(model, layer):
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
