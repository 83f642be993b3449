"""`tunedeck chat`: talk to a run's adapter (or a checkpoint, adapter or fused model), optionally side by side
with its base model, for one prompt or a conversation read from stdin."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunedeck.core import toolcalls
from tunedeck.core.chat import ChatError, ChatModel, load_chat_model, resolve_target
from tunedeck.core.data import DataError, load_tools
from tunedeck.core.template import TemplateError
from tunedeck.core.text import visible
from tunedeck.tui.cli.output import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunedeck chat",
        description="Chat with a run's adapter. With --prompt, print the reply and exit; otherwise read "
        "prompts from stdin, one a line (/clear forgets the conversation, /quit or EOF ends).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                     help="run directory (its adapters and base model); a checkpoint or fused model directory also works")
    src.add_argument("--adapter", metavar="DIR", help="adapter directory (adapters.safetensors + adapter_config.json)")
    p.add_argument("--model", metavar="PATH", help="base model (default: the run's model.path or the adapter's base_model)")
    p.add_argument("--prompt", metavar="TEXT", help="one prompt: print the reply and exit")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="reply length limit (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, metavar="T", help="0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (default 1.0 = off)")
    p.add_argument("--compare", action="store_true",
                   help="answer with the base model (adapter off), then with the adapter")
    p.add_argument("--system", metavar="TEXT", help="a system prompt in front of the conversation")
    p.add_argument("--tools", metavar="FILE",
                   help="tool schemas (a JSON list, like tools.json) rendered with every prompt; a [TOOL_CALLS] "
                   "reply is shown as structured calls, checked against them")
    p.set_defaults(func=cmd_chat)
    return p


PARSERS = {"chat": parser}


def cmd_chat(args: argparse.Namespace) -> int:
    try:
        return _chat(args)
    except TemplateError as e:  # the model's chat template failed on this conversation: it names its file
        raise UserError(str(e)) from None


def _chat(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    tools = _tools(args.tools)  # before the model loads: a bad file fails at once
    try:
        base, adapter = resolve_target(Path(args.run_dir or args.adapter), args.model)
        cm = load_chat_model(base, adapter)
    except ChatError as e:
        raise UserError(str(e)) from None
    if args.compare and adapter is None:
        raise UserError(f"{args.run_dir or args.adapter} has no adapter to compare with its base")
    start = [{"role": "system", "content": args.system}] if args.system else []
    histories: dict[str, list[dict]] = {name: list(start) for name in
                                        (("base", "adapter") if args.compare else ("adapter",))}
    if args.prompt is not None:
        _turn(cm, histories, args.prompt, args, tools)
        return 0
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/clear":
            for h in histories.values():
                h[:] = start
        elif line.strip():
            _turn(cm, histories, line.strip(), args, tools)


def _tools(path: str | None) -> list[dict] | None:
    """The --tools schemas (validated), or None."""
    if path is None:
        return None
    try:
        return load_tools(path)
    except DataError as e:
        raise UserError(str(e)) from None


def _turn(cm: ChatModel, histories: dict[str, list[dict]], prompt: str, args: argparse.Namespace,
          tools: list[dict] | None = None) -> None:
    """Stream one reply per history (base first, then the adapter) to stdout; speed to stderr. A
    [TOOL_CALLS] reply is also shown as its calls and kept in the history as structured calls."""
    specs = toolcalls.specs(tools) if tools else None
    for name, history in histories.items():
        history.append({"role": "user", "content": prompt})
        if len(histories) > 1:
            print("=== base (adapter off) ===" if name == "base" else "=== adapter ===", flush=True)
        text, speed = "", 0.0
        for chunk in cm.reply(history, adapter=name != "base", max_tokens=args.max_tokens,
                              temperature=args.temperature, top_p=args.top_p, tools=tools):
            text += chunk.text
            speed = chunk.tokens_per_sec
            sys.stdout.write(visible(chunk.text))
            sys.stdout.flush()
        print(flush=True)
        for line in toolcalls.describe_calls(text, specs) or ():
            print(visible(line), flush=True)
        print(f"({speed:.1f} tokens/s)", file=sys.stderr, flush=True)
        history.append(toolcalls.reply_message(text))
