"""`tunedeck config init|check`: write a commented starter config, or validate one and list every problem."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tunedeck.core.config import PRESETS, Config, ConfigError, beside, load, preset, save
from tunedeck.core.data import DataError, check_kto_weights, suggest_kto_weights
from tunedeck.core.data import load as load_dataset
from tunedeck.core.text import visible
from tunedeck.tui.cli.output import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedeck config")
    csub = p.add_subparsers(dest="config_cmd", required=True, metavar="{init,check}")
    init = csub.add_parser("init", help="write a commented starter config")
    init.add_argument("path", help="where to write the TOML file")
    init.add_argument("--preset", choices=PRESETS, default="mac-24gb",
                      help="mac-24gb: Mistral-7B 4-bit KTO for a 24 GB Mac (default); demo: the tiny offline model")
    init.add_argument("--data", metavar="FILE", help="dataset path to put in [data].path")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)
    check = csub.add_parser("check", help="validate a config and list every problem")
    check.add_argument("path")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. train.iters=50 (repeatable)")
    check.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    check.set_defaults(func=cmd_check)
    return p


PARSERS = {"config": parser}


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} already exists (use --force to overwrite)")
    data_path = None
    if args.data:  # data.path is relative to the config file, wherever the command was typed
        data_path = os.path.relpath(Path(args.data).resolve(), path.resolve().parent)
    cfg = preset(args.preset, data_path)
    note = ""
    if args.data and cfg.train.method == "kto":
        counts = _label_counts(Path(args.data))
        if counts:
            cfg.kto.desirable_weight, cfg.kto.undesirable_weight = suggest_kto_weights(*counts)
            note = (f"; KTO weights for {counts[0]} desirable / {counts[1]} undesirable: "
                    f"desirable_weight = {cfg.kto.desirable_weight}, undesirable_weight = {cfg.kto.undesirable_weight}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save(cfg, path, comments=True)
    print(f"wrote {visible(str(path))} (preset {args.preset}{note})")
    if not args.data and not beside(cfg.data.path, path.parent).is_file():
        print(f"tunedeck: note: data.path = {visible(cfg.data.path)} is a placeholder (no such file beside the config): "
              f"set it to your JSONL, or write the config with --data FILE", file=sys.stderr)
    return 0


def _label_counts(path: Path) -> tuple[int, int] | None:
    """(desirable, undesirable) in a dataset, or None (with a warning) if it cannot be read."""
    try:
        ds = load_dataset(path, strict=False)
    except (DataError, OSError) as e:
        print(f"tunedeck: warning: cannot read {visible(str(path))} to suggest KTO weights: "
              f"{visible(str(e).splitlines()[0] if str(e) else type(e).__name__)}", file=sys.stderr)
        return None
    nd = sum(1 for e in ds.examples if e.label)
    return nd, len(ds.examples) - nd


def _kto_weight_warning(cfg: Config, config_path: Path) -> str | None:
    """The KTO paper's weight rule checked against the config's dataset (when it can be read)."""
    if cfg.train.method != "kto" or cfg.kto.loss_type != "kto":
        return None
    data_path = beside(cfg.data.path, config_path.parent)
    if not data_path.is_file():
        return None
    counts = _label_counts(data_path)
    if not counts or not (msg := check_kto_weights(*counts, cfg.kto.desirable_weight, cfg.kto.undesirable_weight)):
        return None
    wd, wu = suggest_kto_weights(*counts)
    return f"{msg}; suggested: kto.desirable_weight = {wd}, kto.undesirable_weight = {wu}"


def cmd_check(args: argparse.Namespace) -> int:
    shown = visible(str(args.path))
    try:
        cfg, warnings = load(args.path, args.overrides)
    except ConfigError as e:
        for p in e.problems:
            print(f"{shown}: {visible(str(p))}", file=sys.stderr)
        print(f"{shown}: {len(e.problems)} problem(s)", file=sys.stderr)
        return 1
    if w := _kto_weight_warning(cfg, Path(args.path)):
        warnings = [*warnings, w]
    data_path = beside(cfg.data.path, Path(args.path).parent)
    if not data_path.is_file():
        warnings = [*warnings, f"data.path {cfg.data.path}: no such file ({data_path}; relative paths are relative to "
                               "the config's directory): training will not start until it exists"]
    for w in warnings:
        print(f"{shown}: warning: {visible(str(w))}", file=sys.stderr)
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        print(f"{shown}: ok ({cfg.train.method}, model {visible(cfg.model.path)}, data {visible(cfg.data.path)})"
              + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0
