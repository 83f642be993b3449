"""The KTO reference pass (core.reference.compute_set) against one forward over the examples' own tokens.

The pass computes each example's completion log-prob and its KL pair's (the prompt with another example's
completion). It runs the KL pairs on the prompt keys/values of their examples' forward (core.prefix_kl), in
the examples' length-sorted batches, as training does, the dense parts on the real tokens alone
(core.unpadded); the old path ran two separate forwards, one over the examples and one over the KL pairs
(`old_over_forward`). "forward" is `core.reference.compute` over the examples alone, in the same batches
(2 x train.batch_size), the same mode (layer by layer with --grad-checkpoint) and the same model; "padded_*"
are both with core.unpadded off (every layer over the padded rows: the pass before it). Timings are the fastest
of --repeat interleaved rounds after one warm-up; the last line printed is one JSON object.

    python bench/reference_pass.py --quick                       # the random tiny model, the bundled data (CPU)
    python bench/reference_pass.py --size 7b --data synthetic --seq 1024 --examples 64 --quantize 4 --grad-checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

GB = 1e9


def build_model(size: str) -> str:
    from tunedeck.core import demo

    dest = Path(tempfile.gettempdir()) / "tunedeck-bench" / f"{size}-demo"
    if not (dest / "config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        demo.build(dest, size=size, tokenizer="demo", progress=lambda m: print(m, file=sys.stderr))
    return str(dest)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model as the trainer loads it (dtype, quantization, the per-layer matmul choice, a fresh adapter)."""
    from tunedeck.core import backend, layerwise
    from tunedeck.core.config import Config
    from tunedeck.core.model import load_for_training
    from tunedeck.core.step import wants_compile

    cfg = Config()
    cfg.model.path, cfg.model.quantize, cfg.model.quantized_matmul = args.model_dir, args.quantize, args.quantized_matmul
    cfg.lora.rank, cfg.lora.keys = 16, ["q_proj", "v_proj"]
    loaded = load_for_training(cfg.model, cfg.lora, backend.dtype_for(backend.detect(), args.dtype or "auto"), 0)
    loaded.model.eval()
    cfg.train.compile = args.compile
    layerwise.use_compiled(loaded.model, wants_compile(cfg))  # as the trainer (layer by layer)
    return loaded.model, loaded.tokenizer


def sequences(args: argparse.Namespace, tokenizer: Any) -> Any:
    """KTO sequences with their KL pairs: the bundled data through tunedeck's template, or synthetic ones."""
    from tunedeck.core import data, demo
    from tunedeck.core.batching import Sequences, derangement, tokenize

    if args.data == "sample":
        examples = data.load(demo.sample_dataset()).examples[: args.examples or None]
        return tokenize(tokenizer, examples, args.seq, kto=True, seed=0)
    rng = np.random.default_rng(0)
    n, prompt = args.examples, max(1, round(args.seq * args.prompt_share))
    ids = [rng.integers(10, min(tokenizer.vocab_size, 2000), args.seq + 1).astype(np.int32) for _ in range(n)]
    starts = np.full(n, prompt)
    seqs = Sequences(ids=ids, starts=starts, labels=rng.random(n) < 0.75)
    partners = derangement(n, 0)
    seqs.set_kl_pairs([np.concatenate([ids[i][:prompt], ids[p][prompt:]]) for i, p in enumerate(partners)],
                      starts.copy(), partners)
    return seqs


def timed(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, tuple[float, float, Any]]:
    """Each function's (fastest seconds of `repeat` rounds, its peak GB, its result): one warm-up each, then the
    rounds interleaved, so that a slow spell of a shared machine hits every contender."""
    best: dict[str, float] = {name: float("inf") for name in fns}
    peak: dict[str, float] = dict.fromkeys(fns, 0.0)
    result: dict[str, Any] = {}
    for name, fn in fns.items():  # the warm-up: on CUDA, the first batch of each shape compiles its kernels
        t0 = time.perf_counter()
        result[name] = fn()
        mx.synchronize()
        print(f"{name}: first run {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    for _ in range(repeat):
        for name, fn in fns.items():
            mx.synchronize()
            mx.reset_peak_memory()
            t0 = time.perf_counter()
            result[name] = fn()
            mx.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
            peak[name] = max(peak[name], mx.get_peak_memory() / GB)
    return {name: (best[name], peak[name], result[name]) for name in fns}


def padded(fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` with core.unpadded off: the batches' padded rows through every layer (the pass before it)."""
    from tunedeck.core import unpadded

    def run() -> Any:
        supported, unpadded.supported = unpadded.supported, lambda model: False
        try:
            return fn()
        finally:
            unpadded.supported = supported

    return run


def measure(model: Any, seqs: Any, batch: int, stepwise: bool, repeat: int) -> dict[str, Any]:
    from tunedeck.core.reference import compute, compute_set

    forward = lambda: compute(model, seqs.ids, seqs.starts, batch, stepwise=stepwise)  # noqa: E731
    reference = lambda: compute_set(model, seqs, batch, stepwise=stepwise)  # noqa: E731
    got = timed({
        "forward": forward,
        "reference": reference,
        "old": lambda: (compute(model, seqs.ids, seqs.starts, batch, stepwise=stepwise),
                        compute(model, seqs.kl_ids, seqs.kl_starts, batch, stepwise=stepwise)),
        "padded_forward": padded(forward),
        "padded_reference": padded(reference),
    }, repeat)
    fwd_s = got["forward"][0]
    (lp, kl), (lp0, kl0) = got["reference"][2], got["old"][2]
    return {"reference_over_forward": round(got["reference"][0] / fwd_s, 3),
            "reference_over_padded_forward": round(got["reference"][0] / got["padded_forward"][0], 3),
            "padded_reference_over_padded_forward": round(got["padded_reference"][0] / got["padded_forward"][0], 3),
            "old_over_forward": round(got["old"][0] / fwd_s, 3),
            **{f"{name}_s": round(t, 3) for name, (t, _, _) in got.items()},
            **{f"{name}_peak_gb": round(gb, 3) for name, (_, gb, _) in got.items()},
            "max_abs_diff": float(max(np.abs(lp - lp0).max(), np.abs(kl - kl0).max()))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "7b"])
    p.add_argument("--data", default="sample", choices=["sample", "synthetic"])
    p.add_argument("--seq", type=int, default=512, help="data.max_seq_len (sample) or sequence length (synthetic)")
    p.add_argument("--prompt-share", type=float, default=0.75, help="synthetic: the share of each sequence that is prompt")
    p.add_argument("--examples", type=int, default=0, help="0: all of the bundled data (sample); synthetic: 64")
    p.add_argument("--batch", type=int, default=4, help="train.batch_size: the pass runs batches of twice this")
    p.add_argument("--quantize", type=int, default=0, choices=[0, 4, 8])
    p.add_argument("--quantized-matmul", default="auto", choices=["auto", "dequantize", "kernel"])
    p.add_argument("--dtype", default="", help="default: float32 on CPUs, bfloat16 on GPUs")
    p.add_argument("--grad-checkpoint", action="store_true", help="only the layer-by-layer mode")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="train.compile: layer by layer, each layer's forward compiled (on; auto = off)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="the tiny model on the first 64 bundled examples, both modes")
    return p


def main() -> None:
    args = parser().parse_args()
    if args.quick:
        args.size, args.data, args.examples = "tiny", "sample", 64
    if args.data == "synthetic" and not args.examples:
        args.examples = 64
    from tunedeck.core import backend

    args.model_dir = build_model(args.size)
    model, tok = load(args)
    seqs = sequences(args, tok)
    modes = [True] if args.grad_checkpoint else [False, True]
    out: dict[str, Any] = {"device": f"{backend.detect().kind} ({backend.detect().note})", "size": args.size,
                           "data": args.data, "examples": len(seqs), "tokens": int(seqs.lengths.sum()),
                           "kl_shared": float(np.mean(seqs.kl_shared)), "batch": 2 * args.batch,
                           "quantize": args.quantize, "quantized_matmul": args.quantized_matmul,
                           "compile": args.compile}
    for stepwise in modes:
        r = measure(model, seqs, 2 * args.batch, stepwise, args.repeat)
        print(("layer by layer " if stepwise else "whole model    ") + json.dumps(r), file=sys.stderr)
        out.update(r if stepwise == modes[0] else {f"{k}_layerwise": v for k, v in r.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
