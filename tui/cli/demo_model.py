"""`tunedeck demo-model`: build the offline demo model (pre-trained on the sample data, or random weights)."""

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
    p.add_argument("--random", action="store_true",
                   help=f"random weights, built in seconds (the model the test suite uses, and what \"demo\" means "
                        f"when {demo.PRETRAINED_ENV}=0); default: pre-trained on the sample conversations (~2 minutes)")
    p.add_argument("--size", choices=list(demo.SIZES), default=None,
                   help=f"architecture (default {demo.DEMO_SIZE}, 0.9M params, pre-trained; with --random "
                        f"{demo.RANDOM_SIZE}, 4M params); other shapes only with --random")
    p.add_argument("--tokenizer", choices=["demo", "mistral-v3"], default="demo",
                   help="demo: BPE trained on the sample data; mistral-v3: Mistral's real tokenizer (needs "
                        "mistral-common; only with --random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the directory exists")
    p.set_defaults(func=cmd_demo_model)
    return p


PARSERS = {"demo-model": parser}


def cmd_demo_model(args: argparse.Namespace) -> int:
    random = args.random or demo.random_by_default()
    size = args.size or demo.default_size(random)
    if not random:
        try:
            demo.check_pretrainable(size, args.tokenizer)
        except ValueError as e:
            raise UserError(f"demo-model: {e}") from None
    dest = Path(args.dir) if args.dir else demo.default_dir(random, size, args.seed, args.tokenizer)
    if dest.exists():
        if not args.force:
            if (dest / "config.json").is_file():
                print(dest)
                return 0
            raise UserError(f"{dest} exists and is not a model directory (use --force to replace it)")
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        demo.build(dest, size=size, seed=args.seed, tokenizer=args.tokenizer, progress=demo.StderrProgress(),
                   steps=0 if random else demo.RECIPE.steps)
    except ImportError as e:
        raise UserError(f"{e}; install it with `pip install mistral-common`") from e
    print(dest)
    return 0
