"""tunedeck against PyTorch's own LoRA trainers at equal settings: torch+PEFT SFT and TRL's `KTOTrainer`.

Same model shape (the bench model's config.json, random weights), same tokens (synthetic rows of --seq + 1
tokens, the first a BOS prompt and every later token trained), same LoRA (rank, scale 2, no dropout, --keys,
every layer), batch, optimizer (AdamW, lr 1e-5), no gradient checkpointing. The peers run in PyTorch (CUDA
bf16, or CPU float32 where there is no GPU) with PEFT: SFT as a plain loop (forward, loss, backward, step),
KTO through TRL's `KTOTrainer` (loss_type "kto", its KL pairs by rotation, reference log-probs precomputed as
tunedeck does unless --trl-ref-live). tunedeck runs through bench/compare_mlx_lm.py's workers. Each contender
runs in its own process; step times are medians after --warmup; peaks are the framework's own counters
(torch.cuda.max_memory_allocated; MLX's peak memory), each including the weights. The last line is JSON.

    python bench/trl_peer.py --quick                                  # demo-sized model, CPU, a few minutes
    python bench/trl_peer.py --size 7b --batch 4 --seq 512 --rank 16  # the issue's row (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rows(args: argparse.Namespace, vocab: int) -> np.ndarray:
    """compare_mlx_lm's synthetic rows (prompt share 0): the same token ids tunedeck trains on."""
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(10, min(vocab, 2000), args.seq + 1) for _ in range(args.examples)]).astype(np.int64)
    ids[:, 0] = 1
    return ids


def torch_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The bench model's shape in torch (random weights, as tunedeck's), with PEFT LoRA adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = AutoConfig.from_pretrained(args.model_dir)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=args.keys.split(","),
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora), device


def peak_gb(device: str) -> float | None:
    """torch's peak allocated memory (None on a CPU, where torch keeps no such counter)."""
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def worker_torch_sft(args: argparse.Namespace) -> dict[str, Any]:
    """torch+PEFT SFT: the plain loop, every token after the BOS trained (transformers' shifted loss)."""
    import torch

    model, device = torch_model(args)
    model.train()
    ids = torch.tensor(rows(args, model.config.vocab_size), device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    reset_peak(device)
    times = []
    for step in range(args.warmup + args.steps):
        batch = ids[(step * args.batch) % len(ids):][: args.batch]
        t0 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)  # waits for the step
        times.append(time.perf_counter() - t0)
    step_time = statistics.median(times[args.warmup:])
    return {"step_time": step_time, "tokens_per_sec": args.batch * args.seq / step_time, "peak_memory_gb": peak_gb(device),
            "loss": float(loss)}


def worker_trl_kto(args: argparse.Namespace) -> dict[str, Any]:
    """TRL's KTOTrainer on the same rows: prompt = the BOS, completion = the rest; 3 of 4 examples desirable."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import KTOConfig, KTOTrainer

    model, device = torch_model(args)
    ids = rows(args, model.config.vocab_size)
    labels = np.random.default_rng(0).random(len(ids)) < 0.75
    comps = [r[1:].tolist() for r in ids]
    b = args.batch
    kl = [comps[(i // b) * b + (i % b - 1) % b] for i in range(len(comps))]  # TRL's rotation within each batch
    data = Dataset.from_dict({"prompt_ids": [r[:1].tolist() for r in ids], "completion_ids": comps,
                              "KL_completion_ids": kl, "label": labels.tolist()})

    class Pretokenized(KTOTrainer):
        def _prepare_dataset(self, dataset: Any, *_a: Any, **_k: Any) -> Any:
            return dataset

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_a: Any, **_k: Any) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_a: Any, **_k: Any) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"trl-kto-{os.getpid()}"
    cfg = KTOConfig(output_dir=str(out), per_device_train_batch_size=b, max_steps=args.warmup + args.steps,
                    learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, beta=0.1, loss_type="kto",
                    desirable_weight=1.0, undesirable_weight=2.25, max_length=args.seq + 1,
                    precompute_ref_log_probs=not args.trl_ref_live, bf16=device == "cuda", use_cpu=device == "cpu",
                    gradient_checkpointing=False, logging_steps=10**6, save_strategy="no", report_to="none",
                    dataloader_num_workers=0, seed=0)
    trainer = Pretokenized(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Clock()])
    reset_peak(device)
    trainer.train()
    step_time = statistics.median(times[args.warmup:])
    return {"step_time": step_time, "tokens_per_sec": b * args.seq / step_time, "peak_memory_gb": peak_gb(device)}


def tunedeck(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """compare_mlx_lm's tunedeck worker at these settings."""
    import compare_mlx_lm

    ns = argparse.Namespace(model_dir=args.model_dir, passthrough=[
        "--size", args.size, "--batch", str(args.batch), "--seq", str(args.seq), "--prompt-share", "0",
        "--rank", str(args.rank), "--keys", args.keys, "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--examples", str(args.examples), "--compile", args.compile] + (
        ["--dtype", args.dtype] if args.dtype else []))
    return compare_mlx_lm.run_worker(ns, method)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "7b"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--examples", type=int, default=48)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--keys", default="q_proj,v_proj")
    p.add_argument("--dtype", default="", help="tunedeck's dtype (default: float32 on CPUs, bfloat16 on GPUs)")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="tunedeck's train.compile")
    p.add_argument("--trl-ref-live", action="store_true",
                   help="TRL computes the reference log-probs in every step (its default) instead of precomputing them")
    p.add_argument("--only", default="", help="comma-separated contenders (torch_sft, trl_kto, sft, kto)")
    p.add_argument("--quick", action="store_true", help="the tiny model, 4 x 128, few steps (CPU)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.quick:
        args.size, args.seq, args.steps, args.warmup, args.examples = "tiny", 128, 4, 2, 16
    args.argv = [a for a in sys.argv[1:] if a != "--quick"] + (
        ["--size", args.size, "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--examples", str(args.examples)] if args.quick else [])
    if args.worker:
        args.model_dir = os.environ["TUNEDECK_BENCH_MODEL"]
        print(json.dumps({"torch_sft": worker_torch_sft, "trl_kto": worker_trl_kto}[args.worker](args)))
        return
    import compare_mlx_lm

    args.model_dir = compare_mlx_lm.build_model(args.size, "demo")
    only = args.only.split(",") if args.only else ["torch_sft", "trl_kto", "sft", "kto"]
    results: dict[str, dict[str, Any]] = {}
    for name in only:
        if name in ("torch_sft", "trl_kto"):
            results[name] = compare_mlx_lm.run_script_worker(Path(__file__), name, args.argv, args.model_dir)
        if name in ("sft", "kto"):
            results[f"tunedeck_{name}"] = tunedeck(args, name)
    summary: dict[str, Any] = {k: {f: r.get(f) for f in ("step_time", "tokens_per_sec", "peak_memory_gb")}
                               for k, r in results.items()}
    for ours, peer in (("tunedeck_sft", "torch_sft"), ("tunedeck_kto", "trl_kto")):
        if ours not in results or peer not in results:
            continue
        summary[f"{ours}_speed_over_{peer}"] = round(results[peer]["step_time"] / results[ours]["step_time"], 3)
        if results[peer]["peak_memory_gb"]:
            summary[f"{ours}_peak_over_{peer}"] = round(results[ours]["peak_memory_gb"] / results[peer]["peak_memory_gb"], 3)
    summary |= {"size": args.size, "batch": args.batch, "seq": args.seq, "rank": args.rank, "keys": args.keys,
                "compile": args.compile, "trl_ref": "live" if args.trl_ref_live else "precomputed"}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
