"""`tunedeck demo-model`: build the tiny offline demo model (random weights, or pre-trained on the sample data)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tunedeck.core import demo
from tunedeck.tui.cli.output import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedeck demo-model")
    p.add_argument("dir", nargs="?", help="destination (default: the user cache, where the app and "
                   "model.path = \"demo\" find it)")
    p.add_argument("--size", choices=list(demo.SIZES), default="tiny", help="architecture (default tiny, ~4M params)")
    p.add_argument("--tokenizer", choices=["demo", "mistral-v3"], default="demo",
                   help="demo: BPE trained on the sample data; mistral-v3: Mistral's real tokenizer (needs mistral-common)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain", action="store_true",
                   help=f"experimental: pre-train it on the sample conversations (minutes; the default when "
                        f"{demo.PRETRAINED_ENV}=1; not for --size 7b)")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory exists")
    p.set_defaults(func=cmd_demo_model)
    return p


PARSERS = {"demo-model": parser}


def cmd_demo_model(args: argparse.Namespace) -> int:
    random = not args.pretrain and demo.random_by_default()
    if args.size == "7b" and not random:
        raise UserError("demo-model --size 7b: a 7B model is too large to pre-train here; leave out --pretrain")
    dest = Path(args.dir) if args.dir else demo.default_dir(random, args.size, args.seed, args.tokenizer)
    if dest.exists():
        if not args.force:
            if (dest / "config.json").is_file():
                print(dest)
                return 0
            raise UserError(f"{dest} exists and is not a model directory (use --force to replace it)")
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        demo.build(dest, size=args.size, seed=args.seed, tokenizer=args.tokenizer, progress=demo.StderrProgress(),
                   steps=0 if random else demo.RECIPE.steps)
    except ImportError as e:
        raise UserError(f"{e}; install it with `pip install mistral-common`") from e
    print(dest)
    return 0
