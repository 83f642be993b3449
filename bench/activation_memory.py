"""What one transformer layer's training step holds, per token, in MLX: value_and_grad over the LoRA adapters of a
stack of N random-weight llama layers (Mistral-7B's shape with --size 7b), N = 2 and 6, eager or compiled, with
mlx-lm's backwards or train.lean_backward's (core.lean_backward), whole layers or only their attention or MLP (the
*_attention / *_mlp variants). The peak above the weights grows by the per-layer slope; it is printed in elements
of the activations' dtype per token and layer (and in units of the hidden and intermediate sizes), each variant in its own process. Beside them, torch+PEFT's count for the same
layers (transformers' Mistral decoder layers, sdpa attention, LoRA r16 on q,v): the bytes autograd saves for the
backward (saved-tensor hooks, each storage once), its slope the same way. The last line is JSON.

    python bench/activation_memory.py --size tiny             # CPU, float32, seconds
    python bench/activation_memory.py --size 7b --seq 512     # GPU, bf16
    python bench/activation_memory.py --dtype bfloat16        # CPU, bf16 (mlx-lm's float32 adapters cast their input)

On CUDA the slopes depend on MLX's CUDA graph limits (bench/results/h200_activation_memory_parts.txt).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SHAPES = {"tiny": (512, 1792, 8, 2), "7b": (4096, 14336, 32, 8)}  # hidden, intermediate, heads, kv heads


def measure(args: argparse.Namespace, layers: int, compiled: bool, lean: bool, parts: str) -> float:
    """Peak bytes above the weights of the second of two identical steps: the layers' SwiGLU plain or lean
    and LoRA input (core.lean_backward), whole layers or only their attention or MLP (`parts`)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from tunedeck.core import backend, lean_backward

    hidden, inter, heads, kv = SHAPES[args.size]
    dtype = getattr(mx, args.dtype or backend.detect().dtype)
    margs = llama.ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                            num_attention_heads=heads, num_key_value_heads=kv, rms_norm_eps=1e-5, vocab_size=256,
                            rope_theta=1e6, tie_word_embeddings=False)
    model = llama.Model(margs)
    model.set_dtype(dtype)

    class Zero(nn.Module):  # a layer's attention or MLP left out: adds nothing to the residual
        def __call__(self, x: mx.array, *rest: Any, **kw: Any) -> mx.array:
            return mx.zeros_like(x)

    for layer in model.model.layers:
        if parts == "attention":
            layer.mlp = Zero()
        elif parts == "mlp":
            layer.self_attn = Zero()
    model.freeze()
    keys = ["self_attn.q_proj", "self_attn.v_proj"] if parts != "mlp" else ["mlp.gate_proj"]
    linear_to_lora_layers(model, layers, {"rank": 16, "scale": 2.0, "dropout": 0.0, "keys": keys})
    lean_backward.use(model, lean)
    mx.eval(model.parameters())
    x = mx.random.normal((args.batch, args.seq, hidden)).astype(dtype)

    def loss(params: Any, x: mx.array) -> mx.array:
        model.update(params)
        for layer in model.model.layers:
            x = layer(x, "causal")
        return (x.astype(mx.float32) ** 2).mean()

    fn = mx.value_and_grad(loss)
    fn = mx.compile(fn) if compiled else fn
    params = model.trainable_parameters()
    mx.eval(fn(params, x))
    mx.synchronize()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(fn(params, x))
    mx.synchronize()
    return mx.get_peak_memory() - base


def torch_saved(args: argparse.Namespace, layers: int) -> float:
    """Bytes torch's autograd saves for the backward of the same stack (weights excluded), in the peer's dtype."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralModel

    hidden, inter, heads, kv = SHAPES[args.size]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = MistralConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
                        num_hidden_layers=layers, vocab_size=256, head_dim=hidden // heads, attn_implementation="sdpa")
    with torch.device(device):
        model = get_peft_model(MistralModel(cfg).to(dtype), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                                      target_modules=["q_proj", "v_proj"]))
        x = torch.randn(args.batch, args.seq, hidden, dtype=dtype)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t: Any) -> Any:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(inputs_embeds=x)
    return float(sum(saved.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--dtype", default="", help="the activations' dtype (default: the backend's, core.backend)")
    p.add_argument("--variants", default="", help="comma-separated variants to run (default all)")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        n, torch, compiled, lean, parts = int(args.worker[0]), *map(int, args.worker[1:4]), args.worker[4]
        print(torch_saved(args, n) if torch else measure(args, n, bool(compiled), bool(lean), parts))
        return
    import mlx.core as mx

    from tunedeck.core import backend

    hidden, inter, _, _ = SHAPES[args.size]
    dtype = args.dtype or backend.detect().dtype
    size = getattr(mx, dtype).size
    out: dict[str, Any] = {"size": args.size, "batch": args.batch, "seq": args.seq, "dtype": dtype}
    variants = {  # (torch, compiled, lean SwiGLU, parts); the *_attention / *_mlp rows LoRA q,v / gate only
        "eager": (0, 0, 0, "all"), "eager_lean": (0, 0, 1, "all"), "compiled": (0, 1, 0, "all"),
        "compiled_lean": (0, 1, 1, "all"), "eager_attention": (0, 0, 0, "attention"),
        "eager_mlp": (0, 0, 0, "mlp"), "eager_mlp_lean": (0, 0, 1, "mlp"), "torch_peft_saved": (1, 0, 0, "all")}
    chosen = args.variants.split(",") if args.variants else list(variants)
    for name, (torch, compiled, lean, parts) in ((n, variants[n]) for n in chosen):
        peaks = [float(subprocess.run([sys.executable, str(Path(__file__).resolve()), "--size", args.size, "--batch",
                                       str(args.batch), "--seq", str(args.seq), "--dtype", dtype, "--worker", str(n), str(torch),
                                       str(compiled), str(lean), parts], capture_output=True, text=True, check=True).stdout.split()[-1])
                 for n in (2, 6)]
        per_layer = (peaks[1] - peaks[0]) / 4 / (args.batch * args.seq * size)
        out[name] = {"elements_per_token_layer": round(per_layer), "hidden_units": round(per_layer / hidden, 2),
                     "intermediate_units": round(per_layer / inter, 2),
                     "rest_gb": round((peaks[0] - 2 * per_layer * args.batch * args.seq * size) / 1e9, 3)}
        print(name, out[name], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
