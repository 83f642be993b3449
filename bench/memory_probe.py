"""Where training memory goes: peak after each phase of loading and of one training step.

    python bench/memory_probe.py MODEL_DIR --quantize 4 --batch 2 --seq 1024 --grad-checkpoint
"""

from __future__ import annotations

import argparse
import json

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

GB = 1e9


def mark(label: str, out: dict) -> None:
    mx.synchronize()
    out[label] = {"active": round(mx.get_active_memory() / GB, 2), "peak": round(mx.get_peak_memory() / GB, 2)}
    print(label, out[label], flush=True)
    mx.reset_peak_memory()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--quantize", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--lazy", action="store_true", help="quantize from lazily loaded weights")
    p.add_argument("--loss", default="packed", choices=["packed", "full", "mlx_lm"])
    args = p.parse_args()
    import mlx_lm
    from mlx_lm.tuner.trainer import default_loss, grad_checkpoint

    from tunedeck.core.batching import pack, pad
    from tunedeck.core.config import LoraConfig
    from tunedeck.core.losses import packed_sft_loss, sft_loss
    from tunedeck.core.model import apply_adapters

    out: dict = {}
    model, _ = mlx_lm.load(args.model, lazy=args.lazy)
    model.set_dtype(mx.bfloat16)
    if args.quantize:
        nn.quantize(model, 64, args.quantize, class_predicate=lambda _p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0)
    mx.eval(model.parameters())
    mark("load", out)
    apply_adapters(model, LoraConfig(rank=16, scale=2.0, dropout=0.0, keys=["q_proj", "v_proj"]), "probe")
    if args.grad_checkpoint:
        grad_checkpoint(model.layers[0])
    opt = optim.Adam(learning_rate=1e-5)
    rng = np.random.default_rng(0)
    ids = [rng.integers(10, 2000, args.seq + 1).astype(np.int32) for _ in range(args.batch)]
    starts = np.ones(args.batch, int)
    if args.loss == "packed":
        arrays = tuple(map(mx.array, pack(ids, starts)))
        fn = lambda m, *a: packed_sft_loss(m, *a)[0]
    elif args.loss == "full":
        arrays = tuple(map(mx.array, pad(ids, starts)))
        fn = lambda m, *a: sft_loss(m, *a)[0]
    else:
        arrays = (mx.array(np.stack(ids)), mx.array([[1, args.seq + 1]] * args.batch))
        fn = lambda m, *a: default_loss(m, *a)[0]
    vg = nn.value_and_grad(model, fn)
    mark("adapters", out)
    for i in range(2):
        loss, grads = vg(model, *arrays)
        opt.update(model, grads)
        mx.eval(loss, model.parameters(), opt.state)
        mark(f"step{i}", out)
    print(json.dumps({"args": vars(args), **out}))


if __name__ == "__main__":
    main()
