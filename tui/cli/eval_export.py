"""`tunedeck eval|export`: score a run's adapter against its base on held-out examples; fuse it into the
base, or export it as GGUF (llama.cpp, Ollama) or a PEFT adapter."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tunedeck.core.evaluate import EvalError, evaluate, format_table, save_report
from tunedeck.core.export import export_gguf, export_hf, fuse
from tunedeck.tui.cli.output import UserError


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunedeck eval",
        description="Score the base model (adapter off) and the adapter on held-out examples: completion "
        "loss and perplexity (desirable), KTO implicit rewards beta*(logp_adapter - logp_base) with margin "
        "and accuracy, and for tool-use data the share of greedy answers that are well-formed tool calls "
        "and name the reference's tool. Prints a table (metric | base | adapter | delta) and writes "
        "RUN_DIR/eval.json; progress goes to stderr.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", default="valid", metavar="valid|FILE",
                   help="'valid': the run's validation split, as training computed it (default); or a dataset file")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--max-examples", type=int, default=0, metavar="N",
                   help="score at most N examples, labels in proportion (default: all)")
    p.add_argument("--max-tokens", type=int, default=128, metavar="N",
                   help="generation length for the tool-call score (default 128; 0 skips generation)")
    p.add_argument("--checkpoint", metavar="NAME", help="a checkpoint (step-NNNNNN, 'latest') instead of RUN_DIR/adapters")
    p.add_argument("--model", metavar="PATH", help="base model instead of the run's model.path (e.g. a moved or fused model)")
    p.set_defaults(func=cmd_eval)
    return p


def export_parser() -> argparse.ArgumentParser:
    e = argparse.ArgumentParser(
        prog="tunedeck export",
        description="--fuse: base + adapter as one model directory that mlx_lm.load loads, verified by comparing "
        "its logits with base + adapter (a quantized base is de-quantized unless --requantize). --gguf: the fused "
        "model as a GGUF file for llama.cpp (llama/mistral; f16 or q8_0, --gguf-type), checked in llama.cpp when "
        "llama-cpp-python is installed: it loads, tokenizes rendered conversations of the run's data exactly as "
        "the model's tokenizer does, and its logits match the fused model; a file that fails is not kept. "
        "--ollama DIR: the GGUF plus a Modelfile (`ollama create NAME -f DIR/Modelfile`). --hf: a PEFT LoRA "
        "adapter (adapter_model.safetensors + adapter_config.json; A = lora_a.T, B = lora_b.T, lora_alpha = "
        "scale * r) for transformers/PEFT; not for DoRA adapters.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--fuse", metavar="OUT_DIR", help="write a fused model directory")
    what.add_argument("--gguf", metavar="FILE", help="write a GGUF file (.gguf)")
    what.add_argument("--ollama", metavar="OUT_DIR", help="write OUT_DIR/model.gguf and OUT_DIR/Modelfile for Ollama")
    what.add_argument("--hf", metavar="OUT_DIR", help="write a PEFT (Hugging Face) LoRA adapter directory")
    e.add_argument("--checkpoint", metavar="NAME", help="a checkpoint (step-NNNNNN, 'latest') instead of RUN_DIR/adapters")
    e.add_argument("--model", metavar="PATH", help="base model instead of the run's model.path")
    e.add_argument("--requantize", action="store_true",
                   help="--fuse with a quantized base: keep the fused model quantized (smaller, less exact)")
    e.add_argument("--gguf-type", choices=("f16", "q8_0"), default="f16",
                   help="--gguf/--ollama: weight type (default f16; q8_0 is about half the size)")
    e.add_argument("--tolerance", type=float, metavar="X",
                   help="--fuse, --gguf: max abs logit difference allowed (default: derived from the type's rounding)")
    e.add_argument("--force", action="store_true", help="replace an existing output")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_export)
    return e


PARSERS = {"eval": eval_parser, "export": export_parser}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.max_examples < 0 or args.max_tokens < 0:
        raise UserError("--max-examples and --max-tokens must not be negative")
    try:
        report = evaluate(args.run_dir, split=args.split, max_examples=args.max_examples, max_tokens=args.max_tokens,
                          checkpoint=args.checkpoint, model=args.model, progress=_say, write=False)
    except EvalError as e:
        raise UserError(str(e)) from None
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_table(report), flush=True)
    try:  # the results are on screen first: a full disk loses only the file
        _say(f"eval: wrote {save_report(args.run_dir, report)}")
    except OSError as e:
        raise UserError(f"the results are above, but {Path(args.run_dir) / 'eval.json'} could not be written: "
                        f"{e.strerror or e}") from None
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        if args.fuse:
            report = fuse(args.run_dir, args.fuse, checkpoint=args.checkpoint, model=args.model,
                          requantize=args.requantize, tolerance=args.tolerance, force=args.force, progress=_say)
        elif args.gguf or args.ollama:
            report = export_gguf(args.run_dir, args.gguf or args.ollama, checkpoint=args.checkpoint, model=args.model,
                                 gguf_type=args.gguf_type, ollama=bool(args.ollama), tolerance=args.tolerance,
                                 force=args.force, progress=_say)
        else:
            report = export_hf(args.run_dir, args.hf, checkpoint=args.checkpoint, force=args.force, progress=_say)
    except EvalError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"export failed: {e}") from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for note in report.get("notes", []):
            print(f"note: {note}", file=sys.stderr)
        print(report["out"])
    return 0
