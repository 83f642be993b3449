"""`tunedeck [WORKSPACE] [--data FILE] [--config FILE] [--model PATH]`: the full-screen app launcher; its
parser is also the root one (`tunedeck --help`, `tunedeck --version`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from tunedeck import __version__
from tunedeck.tui.cli.output import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunedeck",
        description="Keyboard-driven workbench for LoRA fine-tuning (SFT and KTO) of chat models on MLX. "
        "With no subcommand, opens the full-screen app on WORKSPACE (default: the current directory); "
        "with nothing configured there it opens the bundled sample dataset with the demo model.",
        epilog="subcommands: data check, config init|check, train, runs, stop, chat, eval, export, demo-model "
        "(`tunedeck SUBCOMMAND --help` for each)",
    )
    p.add_argument("workspace", nargs="?", default=".", help="workspace directory (holds tunedeck.toml and runs/)")
    p.add_argument("--data", metavar="FILE", help="dataset to open (JSONL)")
    p.add_argument("--config", metavar="FILE", help="training config (TOML)")
    p.add_argument("--model", metavar="PATH", help="base model: local directory, Hugging Face id, or 'demo'")
    p.add_argument("--version", action="version", version=f"tunedeck {__version__}")
    return p


def cmd_app(args: argparse.Namespace) -> NoReturn:
    """Open the app on the workspace; it exits the process when the user quits."""
    from tunedeck.tui.app import run_app  # Textual: imported only when the app opens, never by a headless command

    workspace = Path(args.workspace)
    if not workspace.is_dir():
        raise UserError(f"workspace {workspace} is not a directory")
    run_app(workspace, data=args.data, config=args.config, model=args.model)
