"""The optimizer update outside a compiled step: eager against one `mx.compile`d function.

core.step's update (clip the gradient norm, AdamW with the cosine schedule, bias-corrected) on a tree of LoRA
adapters shaped as a Mistral-7B's (default r16 on q, v over 32 layers: 128 arrays), timed per call after
warm-up, eager and compiled (traced once: the adapters' shapes never change). Eager, each array costs about 15
small kernels; on a GPU each is a launch. Prints one JSON object (ms per update, the ratio).

    python bench/optimizer_update.py                     # on the device machine (CUDA) or a Mac
    python bench/optimizer_update.py --layers 4 --hidden 256 --kv 64 --rank 8   # the tiny model on a CPU
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn


class Adapters(nn.Module):
    """Only the adapter arrays, in the model's tree shape (layers.i.self_attn.{q,v}_proj.lora_{a,b})."""

    def __init__(self, layers: int, hidden: int, kv: int, rank: int) -> None:
        super().__init__()
        self.layers = [{"self_attn": {
            "q_proj": {"lora_a": mx.random.normal((hidden, rank)) * 0.01, "lora_b": mx.zeros((rank, hidden))},
            "v_proj": {"lora_a": mx.random.normal((hidden, rank)) * 0.01, "lora_b": mx.zeros((rank, kv))},
        }} for _ in range(layers)]


def timed(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    mx.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    mx.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--kv", type=int, default=1024, help="v_proj's output width")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    from mlx.utils import tree_flatten, tree_map

    from tunedeck.core import step
    from tunedeck.core.config import Config

    cfg = Config()
    out: dict[str, object] = {"arrays": 0, "device": str(mx.default_device())}
    for name in ("eager", "compiled"):
        model = Adapters(args.layers, args.hidden, args.kv, args.rank)
        opt = step.optimizer(cfg, 1000)
        compute = step._Compute(SimpleNamespace(cfg=cfg), model, opt, None, stepwise=False, eager=True)
        grad = tree_map(lambda a: mx.random.normal(a.shape) * 1e-3, model.trainable_parameters())
        mx.eval(model.parameters(), grad)
        state = compute.state()
        if name == "compiled":  # as core.step.TrainStep does
            opt.init(model.trainable_parameters())
        update = compute.update if name == "eager" else mx.compile(compute.update, inputs=state, outputs=state)
        out["arrays"] = len(tree_flatten(grad))
        out[f"{name}_ms"] = round(timed(lambda u=update, s=state: mx.eval(u(grad), s), args.reps) * 1e3, 3)
    out["eager_over_compiled"] = round(out["eager_ms"] / out["compiled_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
