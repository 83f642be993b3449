"""tunedeck's trainer vs mlx-lm's own trainer on the same model, tokens, LoRA settings and batches.

Each contender runs in its own worker process (clean peak-memory counters), on identical token
sequences: mlx-lm through `mlx_lm.tuner.trainer.train` with its training callback (its own
tokens/s and peak memory), tunedeck through `core.trainer.Trainer` (step events). Tokens are
counted the same way for both: trained (target) tokens per step. Timings are medians over the steps
after `--warmup`; with `--repeat N` each contender runs N times, interleaved, and keeps its fastest
run. The last line printed is one JSON object.

    python bench/compare_mlx_lm.py --quick                      # demo model, ~2.5 min on a 2-core CPU
    python bench/compare_mlx_lm.py --size small --data sample   # ~47M params, the bundled dataset
    python bench/compare_mlx_lm.py --size 7b --seq 2048 --batch 4 --keys q_proj,v_proj --rank 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


# --- shared data ---------------------------------------------------------------------------------


def sequences(args: argparse.Namespace, tokenizer: Any, kto: bool) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(token ids, completion starts, labels): the bundled data through tunedeck's template, or synthetic."""
    n = args.examples
    if args.data == "sample":
        from tunedeck.core import data, demo
        from tunedeck.core.template import encode_example

        examples = data.load(demo.sample_dataset()).examples
        if not kto:
            examples = [e for e in examples if e.label]
        examples = examples[:n]
        enc = [encode_example(tokenizer, e, args.seq) for e in examples]
        return ([np.asarray(e.ids, np.int32) for e in enc], np.array([e.prompt_len for e in enc]),
                np.array([e.label for e in examples]))
    rng = np.random.default_rng(0)
    vocab = min(tokenizer.vocab_size, 2000)
    ids = [rng.integers(10, vocab, args.seq + 1).astype(np.int32) for _ in range(n)]
    for s in ids:
        s[0] = 1  # BOS; every later token is trained (as mlx-lm trains a whole "text" example)
    prompt = max(1, round(args.seq * args.prompt_share))  # the same split for SFT, KTO and mlx-lm
    labels = rng.random(n) < 0.75 if kto else np.ones(n, bool)
    return ids, np.full(n, prompt), labels


# --- workers -------------------------------------------------------------------------------------


def worker_mlx_lm(args: argparse.Namespace) -> dict[str, Any]:
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from tunedeck.core.model import full_keys

    model, tok = load(args.model_dir)
    model.set_dtype(getattr(mx, args.dtype))
    if args.quantize:
        import mlx.nn as nn

        nn.quantize(model, 64, args.quantize, class_predicate=lambda _p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0)
    model.freeze()
    layers = len(model.layers) if args.layers < 0 else args.layers
    linear_to_lora_layers(model, layers, {"rank": args.rank, "scale": 2.0, "dropout": 0.0,
                                          "keys": full_keys(model, args.keys.split(","))})
    ids, starts, _ = sequences(args, tok, kto=False)
    dataset = [(s.tolist(), int(st)) for s, st in zip(ids, starts)]  # offset = index of the first trained token
    reports: list[dict[str, Any]] = []

    class CB(TrainingCallback):
        def on_train_loss_report(self, info: dict[str, Any]) -> None:
            reports.append(info)

    mx.reset_peak_memory()
    with tempfile.TemporaryDirectory() as tmp:
        train(model, optim.Adam(learning_rate=1e-5), dataset, None,
              TrainingArgs(batch_size=args.batch, iters=args.warmup + args.steps, steps_per_report=1,
                           steps_per_eval=10**9, steps_per_save=10**9, max_seq_length=args.seq + 1,
                           adapter_file=str(Path(tmp) / "a.safetensors"), grad_checkpoint=args.grad_checkpoint),
              training_callback=CB())
    timed = reports[args.warmup:]
    return {"tokens_per_sec": statistics.median(r["tokens_per_second"] for r in timed),
            "step_time": statistics.median(1 / r["iterations_per_second"] for r in timed),
            "peak_memory_gb": max(r["peak_memory"] for r in reports), "loss": timed[-1]["train_loss"]}


def worker_tunedeck(args: argparse.Namespace, method: str) -> dict[str, Any]:
    import mlx.core as mx

    from tunedeck.core import config as C
    from tunedeck.core import run_prep, runs, trainer
    from tunedeck.core.batching import Sequences, derangement

    kto = method == "kto"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}", "label": bool(i % 4)}) + "\n"
                                for i in range(args.examples)))
        cfg = C.Config()
        cfg.model.path, cfg.model.quantize, cfg.model.dtype = args.model_dir, args.quantize, args.dtype
        cfg.data.path, cfg.data.max_seq_len, cfg.data.valid_fraction = str(data), args.seq + 1, 0.0
        cfg.lora.rank, cfg.lora.scale, cfg.lora.dropout = args.rank, 2.0, 0.0
        cfg.lora.keys, cfg.lora.num_layers = args.keys.split(","), args.layers
        t = cfg.train
        t.method, t.iters, t.batch_size, t.learning_rate = method, args.warmup + args.steps, args.batch, 1e-5
        t.warmup_steps, t.save_every, t.eval_every, t.grad_checkpoint = 0, 10**6, 10**6, args.grad_checkpoint
        t.compile, t.lean_backward = args.compile, lean_part(args.lean_backward)
        cfg.model.quantized_matmul = args.quantized_matmul
        if kto:
            cfg.kto.undesirable_weight = 2.25

        def synthetic_tokenize(tokenizer, examples, max_seq_len, kto_, seed, **_options):
            ids, starts, labels = sequences(args, tokenizer, kto_)
            seqs = Sequences(ids=ids, starts=starts, labels=labels)
            if kto_:
                partners = derangement(len(ids), seed)
                seqs.set_kl_pairs([np.concatenate([ids[i][: starts[i]], ids[p][starts[p]:]])
                                   for i, p in enumerate(partners)], starts.copy(), partners)
            return seqs

        trainer.tokenize = synthetic_tokenize
        run_dir = run_prep.prepare_run(cfg, None, tmp_path / "runs")
        mx.reset_peak_memory()
        code = trainer.Trainer(run_dir).run()
        events = runs.read_events(run_dir)
        if code != 0:
            raise SystemExit(f"tunedeck {method} failed: {events[-1]} {runs.tail_log(run_dir)}")
    steps = [e for e in events if e["type"] == "step"][args.warmup:]
    start = next(e for e in events if e["type"] == "start")
    return {"tokens_per_sec": statistics.median(e["tokens_per_sec"] for e in steps),
            "step_time": statistics.median(e["step_time"] for e in steps),
            "peak_memory_gb": max(e["peak_memory_gb"] for e in steps), "loss": steps[-1]["loss"],
            "reference_seconds": start.get("reference_seconds")}


def lean_part(which: str) -> str:
    """train.lean_backward for --lean-backward: its own values as they are, or one of its parts alone, timed on
    its own (bench only): "lora" (LoRA's input), "swiglu" (the SwiGLU backward), as "on" with the other part
    switched back."""
    from tunedeck.core import lean_backward

    if which not in ("lora", "swiglu"):
        return which
    use = lean_backward.use

    def part_use(model: Any, on: bool) -> int:
        n = use(model, on)
        for _, module in model.named_modules():
            name = type(module).__name__
            if name.startswith("Lean") and (name == "LeanLoRALinear") != (which == "lora"):
                module.__class__ = type(module).__mro__[1]
        return n

    lean_backward.use = part_use
    return "on"


# --- driver --------------------------------------------------------------------------------------


def build_model(size: str, tokenizer: str) -> str:
    from tunedeck.core import demo

    dest = Path(tempfile.gettempdir()) / "tunedeck-bench" / f"{size}-{tokenizer}"
    if not (dest / "config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        demo.build(dest, size=size, tokenizer=tokenizer, progress=lambda m: print(m, file=sys.stderr))
    return str(dest)


def run_worker(args: argparse.Namespace, which: str) -> dict[str, Any]:
    return run_script_worker(Path(__file__), which, args.passthrough, args.model_dir)


def run_script_worker(script: Path, which: str, argv: list[str], model_dir: str) -> dict[str, Any]:
    """`script --worker which argv...` in its own process (clean peak counters): its last line, as JSON."""
    from tunedeck.core.backend import subprocess_env

    cmd = [sys.executable, str(script.resolve()), "--worker", which, *argv]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env({"TUNEDECK_BENCH_MODEL": model_dir}))
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-5000:])
        raise SystemExit(f"worker {which} failed")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "7b"])
    p.add_argument("--tokenizer", default="demo", choices=["demo", "mistral-v3"])
    p.add_argument("--data", default="synthetic", choices=["synthetic", "sample"],
                   help="synthetic: fixed-length sequences; sample: the bundled dataset via tunedeck's template")
    p.add_argument("--prompt-share", type=float, default=0.75,
                   help="synthetic data: the share of each sequence that is prompt (not trained on), for SFT, "
                        "KTO and mlx-lm alike; 0.75 is the bundled tool-use data's (104 of 139 tokens on average); "
                        "0 trains on every token")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256, help="sequence length (synthetic) or max_seq_len (sample)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--keys", default="q_proj,v_proj")
    p.add_argument("--layers", type=int, default=-1)
    p.add_argument("--quantize", type=int, default=0, choices=[0, 4, 8])
    p.add_argument("--dtype", default="", help="default: float32 on CPUs, bfloat16 on GPUs")
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="tunedeck's train.compile")
    p.add_argument("--lean-backward", nargs="?", const="on", default="auto", choices=["auto", "off", "on", "lora", "swiglu"],
                   help="tunedeck's train.lean_backward (alone: on), or one of its parts alone (bench only)")
    p.add_argument("--skip-kto", action="store_true")
    p.add_argument("--quantized-matmul", default="auto", choices=["auto", "dequantize", "kernel"],
                   help="tunedeck's model.quantized_matmul")
    p.add_argument("--only", default="", help="comma-separated contenders to run (mlx_lm, sft, kto); default all")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each contender this many times, interleaved, and keep each one's fastest run "
                        "(--quick: 4; timings on a shared CPU vary by 10-20%% from run to run)")
    p.add_argument("--quick", action="store_true", help="tiny model, few steps: under 3 minutes on a laptop CPU")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.quick:
        args.size, args.steps, args.warmup, args.examples, args.seq = "tiny", 20, 5, 96, 128
        args.repeat = max(args.repeat, 4)
    if not args.dtype:
        from tunedeck.core.backend import detect

        args.dtype = detect().dtype
    if args.worker:
        args.model_dir = os.environ["TUNEDECK_BENCH_MODEL"]
        fn = {"mlx_lm": worker_mlx_lm, "sft": lambda a: worker_tunedeck(a, "sft"),
              "kto": lambda a: worker_tunedeck(a, "kto")}[args.worker]
        print(json.dumps(fn(args)))
        return
    args.passthrough = [a for a in sys.argv[1:] if a != "--quick"] + (
        ["--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--examples", str(args.examples), "--seq", str(args.seq)] if args.quick else []) + ["--dtype", args.dtype]
    args.model_dir = build_model(args.size, args.tokenizer)
    from tunedeck.core.backend import detect

    device = detect()
    names = {"mlx_lm": "mlx_lm", "tunedeck_sft": "sft", **({} if args.skip_kto else {"tunedeck_kto": "kto"})}
    if args.only:
        names = {name: which for name, which in names.items() if which in args.only.split(",")}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits every contender
        for name, which in names.items():
            runs[name].append(run_worker(args, which))
    results = {name: min(rs, key=lambda r: r["step_time"]) for name, rs in runs.items()}  # each one's best run
    print(f"\n{'':14} {'tokens/s':>10} {'step s':>8} {'peak GB':>8} {'wall s':>7}")
    for name, r in results.items():
        print(f"{name:14} {r['tokens_per_sec']:>10.0f} {r['step_time']:>8.3f} {r['peak_memory_gb']:>8.2f} {r['wall_seconds']:>7.0f}")
    summary: dict[str, Any] = {name: {k: r[k] for k in ("tokens_per_sec", "step_time", "peak_memory_gb")}
                               for name, r in results.items()}
    sft, base = results.get("tunedeck_sft"), results.get("mlx_lm")
    if sft and base:
        summary |= {"sft_ratio": round(sft["tokens_per_sec"] / base["tokens_per_sec"], 3),
                    "peak_memory_ratio": round(sft["peak_memory_gb"] / base["peak_memory_gb"], 3),
                    "tunedeck_tokens_per_sec": sft["tokens_per_sec"], "mlx_lm_tokens_per_sec": base["tokens_per_sec"]}
    summary |= {
        "quantized_matmul": args.quantized_matmul, "device": f"{device.kind} ({device.note})", "dtype": args.dtype, "size": args.size, "batch": args.batch,
        "seq": args.seq, "data": args.data, "prompt_share": args.prompt_share if args.data == "synthetic" else None,
        "quantize": args.quantize, "grad_checkpoint": args.grad_checkpoint, "repeat": args.repeat,
        "compile": args.compile, "lean_backward": args.lean_backward,
    }
    if "tunedeck_kto" in results and sft:
        kto = results["tunedeck_kto"]
        summary["kto_over_sft"] = round(kto["step_time"] / sft["step_time"], 3)
        summary["kto_peak_over_sft"] = round(kto["peak_memory_gb"] / sft["peak_memory_gb"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
