"""QLoRA's frozen base through dequantized weights (model.quantized_matmul): a quantized linear multiplies by
its weight dequantized to the activations' dtype inside the evaluation that uses it, instead of through
`quantized_matmul`. The dequantized copy is a temporary of that evaluation (one layer's, or the output head's),
and the product is a plain matmul: on an H200 a 7B layer's projections, forward and input gradient at 2,048
tokens, cost 1.27x bf16 this way against 4.17x through `quantized_matmul` (bench/results/h200_quant_matmul.txt);
on a 2-core AMD EPYC CPU (float32, OpenBLAS) a 2,048 x 640 x 1,728 product is 40x faster. Metal's
`quantized_matmul` is a tuned kernel, not measured here: "auto" keeps it there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn

_ATTR = "tunedeck_dequantize"  # the model's attribute set by `use`


def chosen(choice: str, backend_kind: str) -> bool:
    """model.quantized_matmul: "auto" dequantizes on CUDA and CPUs (measured faster: module doc) and keeps
    Metal's `quantized_matmul` kernel; "dequantize" and "kernel" force one."""
    return choice == "dequantize" or (choice == "auto" and backend_kind != "metal")


def use(model: nn.Module, on: bool) -> None:
    """Whether this model's layer-by-layer evaluations and its output head dequantize their quantized linears."""
    setattr(model, _ATTR, on)


def wants(model: nn.Module) -> bool:
    return getattr(model, _ATTR, False)


_WEIGHT = "_tunedeck_dequantized"  # a DequantizedLinear's dequantized weight, kept for its context


class DequantizedLinear(nn.QuantizedLinear):
    """A QuantizedLinear multiplying by its weight dequantized to the input's dtype (same parameters). The
    dequantized weight is made once per context (`retyped`), so inputs multiplied by the module in one graph
    (KTO's KL completions beside the examples) share it."""

    def __call__(self, x: mx.array) -> mx.array:
        w = self.__dict__.get(_WEIGHT)
        if w is None or w.dtype != x.dtype:
            w = mx.dequantize(self["weight"], self["scales"], self.get("biases"), group_size=self.group_size,
                              bits=self.bits, mode=self.mode, dtype=x.dtype)
            self.__dict__[_WEIGHT] = w
        y = x @ w.T
        return y + self["bias"] if "bias" in self else y


@contextmanager
def retyped(pairs: list[tuple[nn.Module, type]]) -> Iterator[None]:
    """Each module as an instance of its paired class (a subclass of its own, same parameters) for the block;
    modules already of it (an enclosing context's) are left to that context."""
    pairs = [(m, cls) for m, cls in pairs if type(m) is not cls]
    old = [type(m) for m, _ in pairs]
    for m, cls in pairs:
        m.__class__ = cls
    try:
        yield
    finally:
        for (m, _), cls in zip(pairs, old):
            m.__dict__.pop(_WEIGHT, None)
            m.__class__ = cls


def dequantizing(module: nn.Module, on: bool) -> Any:
    """A context in which `module`'s quantized linears (its own, or inside adapters) multiply by dequantized
    weights if `on`; build the graph inside it (it may be evaluated later)."""
    return retyped([(m, DequantizedLinear) for m in module.modules() if type(m) is nn.QuantizedLinear] if on else [])


def dequantized(model: nn.Module, module: nn.Module) -> Any:
    """`dequantizing(module)` if the model asks for it (`use`)."""
    return dequantizing(module, wants(model))
