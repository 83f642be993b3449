"""Compiled per-layer functions for layer-by-layer checkpointing (core.layerwise), one set per layer structure.

Under train.grad_checkpoint the step is evaluated one layer at a time, so it cannot be one `mx.compile`d
function; but each layer's forward and its backward (the recomputed forward, the adapter gradients and the
input cotangent) can. The functions take the layer's parameters as inputs and run them through one template
layer of the same structure while tracing, so a single trace per input shape serves every layer of the model
(the 32 layers of a 7B model are traced once per batch shape, not 32 times). The template's own parameters are
put back after each trace.

Plain causal layers only: the policy forward (optionally recording each layer's keys and values for
core.prefix_kl) and the backward. Anything else (an array mask, a prefix cache) runs eagerly, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


class Recorder:
    """Cache stand-in for a causal forward: keeps the layer's (rotated) keys and values (core.prefix_kl)."""

    offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys, self.values = keys, values
        return keys, values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        return "causal"


def signature(layer: nn.Module) -> tuple[Any, ...]:
    """What a trace depends on beyond the input shapes: the modules' classes and the parameters' names, shapes,
    dtypes and trainability."""
    trainable = {k for k, _ in tree_flatten(layer.trainable_parameters())}
    params = tuple((k, tuple(v.shape), str(v.dtype), k in trainable) for k, v in tree_flatten(layer.parameters()))
    return tuple(type(m).__name__ for m in layer.modules()), params


@contextmanager
def _holding(template: nn.Module, params: Any) -> Iterator[None]:
    """`template` with `params` (a parameter tree of its structure) for the block, its own ones put back."""
    own = template.parameters()
    template.update(params)
    try:
        yield
    finally:
        template.update(own)


class LayerFunctions:
    """A layer structure's compiled forward, recording forward and backward (module doc)."""

    def __init__(self, template: nn.Module, retyped: Callable[[nn.Module, bool], Any], dequantize: bool) -> None:
        self.template, self.retyped, self.dequantize = template, retyped, dequantize
        self.forward = mx.compile(self._forward)
        self.recording = mx.compile(self._recording)
        self.backward = mx.compile(self._backward)
        self.cotangent = mx.compile(self._cotangent)

    def _call(self, params: Any, x: mx.array, cache: Any = None) -> mx.array:
        with _holding(self.template, params), self.retyped(self.template, self.dequantize):
            return self.template(x, "causal", cache=cache)

    def _forward(self, params: Any, x: mx.array) -> mx.array:
        return self._call(params, x)

    def _recording(self, params: Any, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        rec = Recorder()
        y = self._call(params, x, rec)
        return y, rec.keys, rec.values

    def _projected(self, params: Any, trained: Any, x: mx.array, cot: mx.array) -> mx.array:
        with _holding(self.template, params), _holding(self.template, trained), self.retyped(self.template, self.dequantize):
            return (self.template(x, "causal") * cot).astype(mx.float32).sum()  # its gradient is the layer's VJP

    def _backward(self, params: Any, trained: Any, x: mx.array, cot: mx.array) -> tuple[Any, mx.array]:
        return mx.grad(lambda t, x: self._projected(params, t, x, cot), argnums=(0, 1))(trained, x)

    def _cotangent(self, params: Any, x: mx.array, cot: mx.array) -> mx.array:
        return mx.grad(lambda x: self._projected(params, {}, x, cot))(x)


class CompiledLayers:
    """The compiled functions of a model's layers (core.layerwise uses them when the model has them).
    `retyped(layer, dequantize)` is the context core.layerwise builds a layer's graph in."""

    def __init__(self, retyped: Callable[[nn.Module, bool], Any]) -> None:
        self.retyped = retyped
        self._by_signature: dict[tuple[Any, ...], LayerFunctions] = {}

    def functions(self, layer: nn.Module, dequantize: bool) -> LayerFunctions:
        key = (signature(layer), dequantize)
        if key not in self._by_signature:
            self._by_signature[key] = LayerFunctions(layer, self.retyped, dequantize)
        return self._by_signature[key]

    def forward(self, layer: nn.Module, dequantize: bool, x: mx.array, cache: Recorder | None = None) -> mx.array:
        """layer(x, "causal", cache) with the keys and values put into `cache` if given."""
        fns = self.functions(layer, dequantize)
        if cache is None:
            return fns.forward(layer.parameters(), x)
        y, cache.keys, cache.values = fns.recording(layer.parameters(), x)
        return y

    def backward(self, layer: nn.Module, dequantize: bool, x: mx.array, cot: mx.array) -> tuple[Any, mx.array]:
        """(adapter gradients, input cotangent) of the layer at input x for output cotangent `cot`."""
        fns, trained = self.functions(layer, dequantize), layer.trainable_parameters()
        if not tree_flatten(trained):
            return trained, fns.cotangent(layer.parameters(), x, cot)
        return fns.backward(layer.parameters(), trained, x, cot)
