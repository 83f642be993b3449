"""The `tunedeck` command: the full-screen app with no subcommand, headless subcommands otherwise.

User mistakes print a message to stderr and exit 1 (usage errors exit 2); never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, TextIO

from tunedeck.core import backend
from tunedeck.core.text import one_line, visible


class UserError(Exception):
    """A mistake the user can fix: printed as one message, exit status 1."""


def _fail(msg: str) -> int:
    print(f"tunedeck: error: {visible(msg)}", file=sys.stderr)
    return 1


# --- app -------------------------------------------------------------------------------------


def app_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--version", action="version", version=_version())
    return p


def _version() -> str:
    import tunedeck

    return f"tunedeck {tunedeck.__version__}"


def cmd_app(args: argparse.Namespace) -> NoReturn:
    from tunedeck.tui.app import run_app

    workspace = Path(args.workspace)
    if not workspace.is_dir():
        raise UserError(f"workspace {workspace} is not a directory")
    run_app(workspace, data=args.data, config=args.config, model=args.model)


# --- config ----------------------------------------------------------------------------------


def add_config_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="create or check a training config (TOML)")
    csub = p.add_subparsers(dest="config_cmd", required=True, metavar="{init,check}")
    init = csub.add_parser("init", help="write a commented starter config")
    init.add_argument("path", help="where to write the TOML file")
    from tunedeck.core.config import PRESETS

    init.add_argument("--preset", choices=PRESETS, default="mac-24gb",
                      help="mac-24gb: Mistral-7B 4-bit KTO for a 24 GB Mac (default); demo: the tiny offline model")
    init.add_argument("--data", metavar="FILE", help="dataset path to put in [data].path")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_config_init)
    check = csub.add_parser("check", help="validate a config and list every problem")
    check.add_argument("path")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. train.iters=50 (repeatable)")
    check.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    check.set_defaults(func=cmd_config_check)


def cmd_config_init(args: argparse.Namespace) -> int:
    from tunedeck.core.config import preset, save

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
            from tunedeck.core.data import suggest_kto_weights

            cfg.kto.desirable_weight, cfg.kto.undesirable_weight = suggest_kto_weights(*counts)
            note = (f"; KTO weights for {counts[0]} desirable / {counts[1]} undesirable: "
                    f"desirable_weight = {cfg.kto.desirable_weight}, undesirable_weight = {cfg.kto.undesirable_weight}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save(cfg, path, comments=True)
    print(f"wrote {visible(str(path))} (preset {args.preset}{note})")
    return 0


def _label_counts(path: Path) -> tuple[int, int] | None:
    """(desirable, undesirable) in a dataset, or None (with a warning) if it cannot be read."""
    from tunedeck.core.data import DataError, load

    try:
        ds = load(path, strict=False)
    except (DataError, OSError) as e:
        print(f"tunedeck: warning: cannot read {visible(str(path))} to suggest KTO weights: "
              f"{visible(str(e).splitlines()[0] if str(e) else type(e).__name__)}", file=sys.stderr)
        return None
    nd = sum(1 for e in ds.examples if e.label)
    return nd, len(ds.examples) - nd


def _kto_weight_warning(cfg, config_path: Path) -> str | None:
    """The KTO paper's weight rule checked against the config's dataset (when it can be read)."""
    from tunedeck.core.data import check_kto_weights, suggest_kto_weights

    if cfg.train.method != "kto" or cfg.kto.loss_type != "kto":
        return None
    data_path = Path(cfg.data.path).expanduser()
    if not data_path.is_absolute():
        data_path = config_path.parent / data_path
    if not data_path.is_file():
        return None
    counts = _label_counts(data_path)
    if not counts or not (msg := check_kto_weights(*counts, cfg.kto.desirable_weight, cfg.kto.undesirable_weight)):
        return None
    wd, wu = suggest_kto_weights(*counts)
    return f"{msg}; suggested: kto.desirable_weight = {wd}, kto.undesirable_weight = {wu}"


def cmd_config_check(args: argparse.Namespace) -> int:
    from tunedeck.core.config import ConfigError, load

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
    for w in warnings:
        print(f"{shown}: warning: {visible(str(w))}", file=sys.stderr)
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        print(f"{shown}: ok ({cfg.train.method}, model {visible(cfg.model.path)}, data {visible(cfg.data.path)})"
              + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0


# --- data ---


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    from tunedeck.core.convert import TARGETS
    from tunedeck.core.data import FORMATS
    from tunedeck.core.template import TRAIN_ON

    p = sub.add_parser("data", help="check, show or convert a dataset file")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{check,show,convert}")
    check = dsub.add_parser(
        "check", help="validate a dataset and print its stats",
        description="Validate a dataset (JSONL or a .json list) and print its stats. Exit 0 if no line "
        "has an error (warnings are listed); otherwise exit 1 and list every bad line as PATH:LINE: reason.")
    check.add_argument("path", metavar="PATH")
    check.add_argument("--format", choices=FORMATS, help="force a format instead of auto-detecting it")
    check.add_argument("--model", metavar="PATH", help="model or tokenizer directory, for token stats")
    check.add_argument("--max-seq-len", type=int, metavar="N", help="report examples longer than N tokens")
    check.add_argument("--lenient", action="store_true",
                       help="set bad lines aside: exit 0 if any example is usable, still listing the bad lines")
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.set_defaults(func=cmd_data_check)
    show = dsub.add_parser(
        "show", help="print one example's tokens, their ids and which are trained",
        description="Render one example with the model's chat template (and its tools) and print every token, "
        "its id and whether the loss trains on it: the token view of the app's Data screen.")
    show.add_argument("path", metavar="PATH")
    show.add_argument("--line", type=int, required=True, metavar="N", help="the example on line N of the file")
    show.add_argument("--model", metavar="DIR", help="model or tokenizer directory (default: the demo model)")
    show.add_argument("--format", choices=FORMATS, help="force a format instead of auto-detecting it")
    show.add_argument("--train-on", choices=TRAIN_ON, default="all_assistant",
                      help="SFT: every assistant turn (default) or the last; KTO trains the last")
    show.add_argument("--json", action="store_true", help="one JSON document: ids, tokens, trained (0/1), spans")
    show.set_defaults(func=cmd_data_show)
    conv = dsub.add_parser(
        "convert", help="rewrite a dataset with native (structured) tool calls, or back to calls in the text",
        description="Convert tool calls between the content-embedded form (the call JSON as the assistant's "
        "text) and the native form (structured tool_calls, tool results naming their call). The input must "
        "check clean; the output (JSONL) is written atomically; what could not be converted is listed.")
    conv.add_argument("src", metavar="IN")
    conv.add_argument("dest", metavar="OUT")
    conv.add_argument("--to", choices=TARGETS, required=True, help="the form to write")
    conv.set_defaults(func=cmd_data_convert)


def _load_tokenizer(path: str):
    """Only the tokenizer of a local model directory (mlx-lm's loader, else transformers)."""
    if not Path(path).is_dir():
        raise UserError(f"--model {path}: not a directory (give a local model or tokenizer directory)")
    if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise UserError(f"--model {path}: no tokenizer.json, tokenizer.model or tokenizer_config.json there")
    from tunedeck.core.model import ModelError, check_remote_code

    try:
        check_remote_code(Path(path), False)
    except ModelError as e:
        raise UserError(f"--model {e}") from None
    try:
        try:
            from mlx_lm.utils import load_tokenizer
        except ImportError:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path)
        tok = load_tokenizer(Path(path))
    except Exception as e:  # noqa: BLE001 - any loader failure is the user's directory
        raise UserError(f"cannot load a tokenizer from {path}: {e}") from None
    from tunedeck.core.model import check_template

    try:
        check_template(tok)  # a template that loops or explodes fails here, with its file and the limit
    except ModelError as e:
        raise UserError(str(e)) from None
    return tok


def _problem_line(p) -> str:
    """`PATH:LINE: reason` for an error; warnings say so."""
    if p.severity == "error":
        return str(p)
    return f"{p.path}:{p.line}: warning: " + (f"{p.field}: {p.message}" if p.field else p.message)


def _print_stats(st: dict) -> None:
    total = st["total"] or 1
    t, c = st["turns"], st["chars"]
    print(f"{st['path']}: {st['total']} examples, format {st['format']}")
    print(f"  desirable    {st['desirable']} ({100 * st['desirable'] / total:.1f}%)")
    print(f"  undesirable  {st['undesirable']} ({100 * st['undesirable'] / total:.1f}%)")
    print(f"  turns        min {t['min']}, mean {t['mean']:.1f}, max {t['max']}")
    print(f"  chars        p50 {c['p50']}, p90 {c['p90']}, p99 {c['p99']}, max {c['max']}")
    if tk := st["tokens"]:
        print(f"  tokens       p50 {tk['p50']}, p90 {tk['p90']}, p99 {tk['p99']}, max {tk['max']}")
    if st["max_seq_len"] and tk is None:
        print("  (token lengths need --model)")
    if st["over_max_seq_len"] is not None:
        print(f"  over {st['max_seq_len']} tokens: {st['over_max_seq_len']} examples; "
              f"{st['truncated_tokens']} prompt tokens would be cut; "
              f"{st['completion_too_long']} completions too long")
    if st["native_tool_calls"] or st["tools"]:
        print(f"  tool calls   {st['native_tool_calls']} native, {st['tool_results']} tool results"
              + (f"; {st['tools']} tools from {st['tools_source']}" if st["tools"] else "; no tool schemas"))
    w = st["suggested_kto_weights"]
    print(f"  suggested KTO weights: desirable_weight={w['desirable_weight']}, "
          f"undesirable_weight={w['undesirable_weight']}")
    if st["skipped"]:
        print(f"  set aside    {st['skipped']} lines ({st['duplicates']} duplicates)")


def cmd_data_check(args: argparse.Namespace) -> int:
    from tunedeck.core.data import DataError, compute_stats, load

    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise UserError("--max-seq-len must be a positive number")
    try:
        ds = load(args.path, format=args.format, strict=False)
    except DataError as e:
        if args.json:
            print(json.dumps({"ok": False, "path": args.path, "format": None, "total": 0, "desirable": 0,
                              "undesirable": 0, "errors": [p.to_dict() for p in e.problems], "warnings": []},
                             indent=2))
        else:
            for p in e.problems:
                print(_problem_line(p))
        print(f"{args.path}: cannot check the dataset", file=sys.stderr)
        return 1
    tokenizer = _load_tokenizer(args.model) if args.model else None
    from tunedeck.core.template import TemplateError

    try:
        st = compute_stats(ds, tokenizer, args.max_seq_len)
    except TemplateError as e:
        raise UserError(str(e)) from None
    ok = not ds.errors or (args.lenient and bool(ds.examples))
    if args.json:
        counts = {"error_count": st.pop("errors"), "warning_count": st.pop("warnings")}
        print(json.dumps({"ok": ok, **st, **counts, "errors": [p.to_dict() for p in ds.errors],
                          "warnings": [p.to_dict() for p in ds.warnings]}, indent=2, ensure_ascii=False))
    else:
        for p in ds.problems:
            print(_problem_line(p))
        if ok:
            _print_stats(st)
    lines = len({p.line for p in ds.errors})
    if ds.errors:
        print(f"{args.path}: {len(ds.errors)} error(s) on {lines} line(s), {len(ds.warnings)} warning(s)"
              + ("; those lines were set aside" if ok else ""), file=sys.stderr)
    return 0 if ok else 1


def _show_tokenizer(model: str | None):
    if model:
        return _load_tokenizer(model)
    from tunedeck.core import demo

    return _load_tokenizer(str(demo.ensure(random=True)))  # its tokenizer is the demo model's either way


def cmd_data_show(args: argparse.Namespace) -> int:
    from tunedeck.core.data import DataError, load
    from tunedeck.core.template import TemplateError, encode_example, token_pieces

    try:
        ds = load(args.path, format=args.format, strict=False)
    except DataError as e:
        raise UserError(str(e)) from None
    ex = next((e for e in ds.examples if e.line == args.line), None)
    if ex is None:
        why = [str(p) for p in ds.problems if p.line == args.line]
        raise UserError("\n".join(why) if why else f"{args.path}: line {args.line}: no example there")
    tok = _show_tokenizer(args.model)
    try:
        enc = encode_example(tok, ex, train_on=args.train_on)
    except TemplateError as e:
        raise UserError(str(e)) from None
    pieces, trained = token_pieces(tok, enc.ids), enc.trained
    if args.json:
        print(json.dumps({"path": args.path, "line": ex.line, "label": ex.label, "ids": enc.ids, "tokens": pieces,
                          "trained": trained, "prompt_len": enc.prompt_len, "spans": enc.spans,
                          "trained_tokens": sum(trained), "tools": len(ex.tools or [])}, ensure_ascii=False))
        return 0
    print(f"{args.path}:{ex.line}: {len(enc.ids)} tokens, {sum(trained)} trained in {len(enc.spans)} span(s)"
          f"{f', {len(ex.tools)} tools rendered' if ex.tools else ''} (* = trained)")
    for i, (tid, piece, t) in enumerate(zip(enc.ids, pieces, trained)):
        print(f"{i:>6} {tid:>7} {'*' if t else ' '} {visible(json.dumps(piece, ensure_ascii=False))}")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from tunedeck.core.convert import convert
    from tunedeck.core.data import DataError

    if Path(args.src).resolve() == Path(args.dest).resolve():
        raise UserError(f"{args.dest}: the output must not be the input (write another file)")
    try:
        report = convert(args.src, args.dest, args.to)
    except DataError as e:
        for p in e.problems:
            print(_problem_line(p))
        raise UserError(f"{args.src}: fix these problems first (nothing was written)") from None
    except OSError as e:
        raise UserError(f"{args.dest}: cannot write: {e.strerror or e}") from None
    for why in report.left:
        print(f"{args.src}:{why}")
    print(f"{args.dest}: {report.records} records, {report.calls} tool calls converted to {args.to}"
          + (f", {len(report.left)} left as they were" if report.left else "")
          + (f"; copied the tool schemas to {report.tools_copied}" if report.tools_copied else ""))
    return 0


# --- end data ---



# --- training --------------------------------------------------------------------------------


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (foreground with a progress bar, or --detach)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("config", nargs="?", help="training config (TOML)")
    src.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped/failed run from its newest verified checkpoint")
    p.add_argument("--run-dir", metavar="DIR", help="where to put the run (default: runs/<timestamp>-<method> beside the config)")
    p.add_argument("--detach", action="store_true", help="start in the background (survives the terminal) and print the run dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. train.iters=50 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, metavar="N",
                   help="data-parallel on this machine: N processes through mlx.launch (one GPU each over NCCL "
                        "on an NVIDIA machine, else the ring backend over loopback), each taking 1/N of every "
                        "batch; train.batch_size must be a multiple of N")
    p.add_argument("--hosts", metavar="FILE",
                   help="data-parallel over several machines: an mlx.launch hostfile (JSON; ring over "
                        "Ethernet/Thunderbolt, or JACCL); one rank per host entry. The run directory, data "
                        "and this Python must exist at the same paths on every host")
    p.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list runs and their status")
    r.add_argument("root", nargs="?", default="runs", help="runs directory (default: ./runs)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)

    s = sub.add_parser("stop", help="stop a running run gracefully (checkpoint, then exit)")
    s.add_argument("run_dir")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    s.set_defaults(func=cmd_stop)


def _config_for_run(args: argparse.Namespace) -> tuple[Path, bool]:
    """Create (or, with --resume, check) the run directory; returns (run_dir, resume)."""
    from tunedeck.core.config import ConfigError, load, save
    from tunedeck.core.runs import RunError, check_run_files, check_writable, is_locked
    from tunedeck.core.trainer import prepare_run

    if args.resume:
        run_dir = Path(args.resume)
        try:
            check_run_files(run_dir)  # a linked or FIFO config.toml gets its own message, not "no config.toml"
        except RunError as e:
            raise UserError(str(e)) from None
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"{run_dir} is not a run directory (no config.toml)")
        if is_locked(run_dir):
            raise UserError(f"{run_dir} is already running")
        if fixed := [o.split("=", 1)[0].strip() for o in args.overrides if _shapes_the_run(o.split("=", 1)[0].strip())]:
            raise UserError(f"--set {', '.join(fixed)}: cannot change on resume (they decide the adapter's shape, the "
                            "base model or the data split that the checkpoints were made with); start a new run instead")
        try:
            check_writable(run_dir)
            cfg, _ = load(run_dir / "config.toml", args.overrides)
        except (ConfigError, RunError) as e:
            raise UserError(str(e)) from None
        _preflight(cfg, run_dir)
        if args.overrides:
            try:
                save(cfg, run_dir / "config.toml")
            except OSError as e:
                raise UserError(f"cannot update {run_dir / 'config.toml'}: {e.strerror or e}") from None
        return run_dir, True
    config_path = Path(args.config)
    try:
        cfg, warnings = load(config_path, args.overrides)
    except ConfigError as e:
        raise UserError(f"invalid config:\n{e}") from None
    for w in warnings:
        print(f"{config_path}: warning: {w}", file=sys.stderr)
    _preflight(cfg, config_path.parent)
    try:
        run_dir = prepare_run(cfg, config_path, config_path.parent / "runs",
                              Path(args.run_dir) if args.run_dir else None)
    except (RunError, OSError) as e:
        raise UserError(str(e)) from None
    return run_dir, False


# keys a resumed run cannot change: the adapter's shape, the base model, and what decides the data split
_RESUME_FIXED_SECTIONS = ("lora.", "model.")
_RESUME_FIXED_KEYS = {"data.path", "data.format", "data.valid_fraction", "data.strict", "data.max_seq_len",
                      "train.method", "train.seed", "train.batch_size", "kto.loss_type"}


def _shapes_the_run(key: str) -> bool:
    return key.startswith(_RESUME_FIXED_SECTIONS) or key in _RESUME_FIXED_KEYS


def _preflight(cfg, base: Path) -> None:
    """Refuse bad data or a bad model directory before a run directory is made or a trainer spawned."""
    from tunedeck.core.data import DataError
    from tunedeck.core.model import ModelError
    from tunedeck.core.trainer import InputError, preflight

    try:
        preflight(cfg, base)
    except DataError as e:
        for p in e.problems:
            print(_problem_line(p), file=sys.stderr)
        errors = [p for p in e.problems if p.severity == "error"]
        raise UserError(f"data.path {cfg.data.path}: {len(errors)} error(s) in the dataset "
                        "(listed above); nothing was started") from None
    except (InputError, ModelError) as e:
        raise UserError(f"{str(e).rstrip('.')}; nothing was started") from None
    except OSError as e:
        raise UserError(f"cannot check the run's inputs: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from tunedeck.core import runs
    from tunedeck.core.progress import ProgressPrinter, write_soft
    from tunedeck.core.trainer import Trainer

    workers, hostfile = _check_workers(args)
    run_dir, resume = _config_for_run(args)
    if workers > 1 or hostfile is not None:
        return _train_distributed(args, run_dir, resume, workers, hostfile)
    if args.detach:
        return _report_detached(run_dir, runs.spawn_detached(run_dir, resume=resume), timeout=60)
    write_soft(sys.stderr, f"run: {run_dir}\n")
    # a closed pipe or a vanished terminal silences the display (what follows goes to train.log), never training
    printer = None if args.quiet else ProgressPrinter(raw_stream(sys.stderr), fallback=run_dir / "train.log")
    code = Trainer(run_dir, resume=resume, progress=printer).run()
    if printer:
        printer.close()
    info = runs.run_info(run_dir)
    if code != 0 and info.error:
        write_soft(sys.stderr, f"tunedeck: error: {info.error}\n")
    write_soft(sys.stdout, f"{run_dir}\n")
    return code


def _report_detached(run_dir: Path, pid: int, timeout: float) -> int:
    """Wait until a detached trainer holds its run; print the run dir, or fail with the log's tail."""
    from tunedeck.core import runs

    if not runs.wait_started(run_dir, pid, timeout=timeout):
        tail = "\n".join(runs.tail_log(run_dir, 15))
        raise UserError(f"training exited at start; {run_dir / 'train.log'}:\n{tail}")
    print(run_dir)
    return 0


def _check_workers(args: argparse.Namespace) -> tuple[int, Path | None]:
    """(ranks, hostfile) from --workers/--hosts, checked against train.batch_size before anything starts."""
    from tunedeck.core.config import ConfigError, load
    from tunedeck.core.launch import LaunchError, hostfile_hosts

    hostfile = Path(args.hosts) if args.hosts else None
    workers = args.workers
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    if hostfile is not None:
        try:
            n = hostfile_hosts(hostfile)
        except LaunchError as e:
            raise UserError(str(e)) from None
        if workers not in (None, n):
            raise UserError(f"--workers {workers} but {hostfile} lists {n} hosts (one rank per host entry)")
        from tunedeck.core.launch import first_host_is_here

        if not first_host_is_here(hostfile):
            print(f"tunedeck: warning: the first host in {hostfile} is rank 0, which writes the run directory "
                  "(events, checkpoints, adapters); list this machine first to follow the run from here",
                  file=sys.stderr)
        workers = n
    workers = workers or 1
    if workers > 1 and hostfile is None:
        from tunedeck.core.backend import detect

        if detect().kind == "cuda":
            import mlx.core as mx

            from tunedeck.core.launch import check_gpu_count

            try:
                check_gpu_count(workers, mx.device_count(mx.gpu))
            except LaunchError as e:
                raise UserError(f"{e}; nothing was started") from None
    if workers > 1:
        source = Path(args.resume) / "config.toml" if args.resume else Path(args.config)
        try:
            cfg, _ = load(source, args.overrides)
        except (ConfigError, OSError):
            return workers, hostfile  # reported by _config_for_run
        if cfg.train.batch_size % workers:
            raise UserError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of the number of workers "
                            f"({workers}): each worker takes an equal share of every batch (the global batch stays "
                            f"{cfg.train.batch_size}); nothing was started")
    return workers, hostfile


def _train_distributed(args: argparse.Namespace, run_dir: Path, resume: bool, workers: int,
                       hostfile: Path | None) -> int:
    """Run the trainer's ranks through mlx.launch; progress comes from the run's events (rank 0 writes them)."""
    from tunedeck.core import launch, runs
    from tunedeck.core.progress import ProgressPrinter

    if args.detach:
        return _report_detached(run_dir, launch.spawn(run_dir, resume, workers, hostfile, detach=True), timeout=180)
    print(f"run: {run_dir} ({workers} workers; their output goes to {run_dir / 'train.log'})", file=sys.stderr)
    printer = None if args.quiet else ProgressPrinter(raw_stream(sys.stderr), fallback=run_dir / "train.log")
    # a closed terminal (SSH drop) must not end the run: the follower and mlx.launch ignore SIGHUP (inherited),
    # the ranks handle it themselves (they keep training; core.trainer)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    proc = launch.spawn(run_dir, resume, workers, hostfile, detach=False)
    code = launch.follow(run_dir, proc, printer, on_interrupt=lambda: print(
        "\ntunedeck: stopping: the workers checkpoint after this step (Ctrl-C again to abandon it)", file=sys.stderr))
    if printer:
        printer.close()
    info = runs.run_info(run_dir)
    if code != 0:
        if info.error:
            print(f"tunedeck: error: {info.error}", file=sys.stderr)
        else:
            print("tunedeck: error: the training processes exited without finishing; the end of "
                  f"{run_dir / 'train.log'}:\n" + "\n".join(runs.tail_log(run_dir, 15)), file=sys.stderr)
    print(run_dir)
    return code


def cmd_runs(args: argparse.Namespace) -> int:
    from tunedeck.core.runs import list_runs

    infos = list_runs(Path(args.root))
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return 0
    if not infos:
        print(f"no runs in {one_line(str(args.root))}")
        return 0
    print(f"{'RUN':40} {'STATUS':9} {'METHOD':6} {'STEP':>11} {'LOSS':>8} {'VAL':>8}")
    for i in infos:
        loss = f"{i.last_loss:.4f}" if i.last_loss is not None else "-"
        val = f"{i.last_val_loss:.4f}" if i.last_val_loss is not None else "-"
        print(f"{one_line(str(i.run_dir)):40} {one_line(i.status):9} {one_line(i.method):6} "
              f"{f'{i.step}/{i.total_steps}':>11} {loss:>8} {val:>8}")
        if i.error and i.status == "failed":  # why it failed, under its row (the whole message is in --json)
            reason = one_line(i.error)
            print(f"  └ {reason[:200]}{'…' if len(reason) > 200 else ''}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from tunedeck.core.runs import RunError, stop_run

    try:
        info = stop_run(Path(args.run_dir), timeout=args.timeout)
    except RunError as e:
        raise UserError(str(e)) from None
    print(f"{args.run_dir}: {info.status} at step {info.step}")
    return 0


# --- chat ----------------------------------------------------------------------------------


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat", help="talk to a run's adapter (or a checkpoint, adapter or fused model)",
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


def _chat_turn(cm, histories: dict[str, list[dict]], prompt: str, args: argparse.Namespace,
               tools: list[dict] | None = None) -> None:
    """Stream one reply per history (base first, then the adapter) to stdout; speed to stderr. A
    [TOOL_CALLS] reply is also shown as its calls and kept in the history as structured calls."""
    from tunedeck.core import toolcalls

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


def cmd_chat(args: argparse.Namespace) -> int:
    from tunedeck.core.template import TemplateError

    try:
        return _chat(args)
    except TemplateError as e:  # the model's chat template failed on this conversation: it names its file
        raise UserError(str(e)) from None


def _chat(args: argparse.Namespace) -> int:
    from tunedeck.core.chat import ChatError, load_chat_model, resolve_target

    if args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    tools = _chat_tools(args.tools)  # before the model loads: a bad file fails at once
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
        _chat_turn(cm, histories, args.prompt, args, tools)
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
            _chat_turn(cm, histories, line.strip(), args, tools)


def _chat_tools(path: str | None) -> list[dict] | None:
    """The --tools schemas (validated), or None."""
    if path is None:
        return None
    from tunedeck.core.data import DataError, load_tools

    try:
        return load_tools(path)
    except DataError as e:
        raise UserError(str(e)) from None


# --- eval and export -------------------------------------------------------------------------


def add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="score a run's adapter against its base on held-out examples",
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

    e = sub.add_parser(
        "export", help="fuse the adapter into the base, or export it as GGUF (llama.cpp, Ollama) or a PEFT adapter",
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


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from tunedeck.core.evaluate import EvalError, evaluate, format_table, save_report

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
    from tunedeck.core.evaluate import EvalError
    from tunedeck.core.export import export_gguf, export_hf, fuse

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


# --- demo model ------------------------------------------------------------------------------


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    from tunedeck.core.demo import PRETRAINED_ENV, SIZES

    p = sub.add_parser("demo-model", help="build the tiny offline demo model")
    p.add_argument("dir", nargs="?", help="destination (default: the user cache, where the app and "
                   "model.path = \"demo\" find it)")
    p.add_argument("--size", choices=list(SIZES), default="tiny", help="architecture (default tiny, ~4M params)")
    p.add_argument("--tokenizer", choices=["demo", "mistral-v3"], default="demo",
                   help="demo: BPE trained on the sample data; mistral-v3: Mistral's real tokenizer (needs mistral-common)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain", action="store_true",
                   help=f"experimental: pre-train it on the sample conversations (minutes; the default when "
                        f"{PRETRAINED_ENV}=1; not for --size 7b)")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory exists")
    p.set_defaults(func=cmd_demo_model)


def cmd_demo_model(args: argparse.Namespace) -> int:
    import shutil

    from tunedeck.core import demo

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


# --- dispatch --------------------------------------------------------------------------------

# Each headless command group registers itself here (keep one line per group).
SUBCOMMAND_PARSERS = [
    add_data_parser,
    add_config_parser,
    add_train_parsers,
    add_chat_parser,
    add_eval_parsers,
    add_demo_parser,
]


def command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedeck", description="tunedeck headless commands")
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMAND_PARSERS:
        add(sub)
    return p


def subcommands() -> set[str]:
    sub = next(a for a in command_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


class VisibleText(io.TextIOBase):
    """A text stream that shows control characters instead of sending them: every headless command prints
    through it, so untrusted text (file names, dataset and model fields, run directories, event fields)
    can never reach the terminal as an escape sequence (clipboard, title, screen clearing, bidi)."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(visible(text))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", "utf-8")


def raw_stream(stream: TextIO) -> TextIO:
    """The terminal behind a VisibleText, for output that draws with control characters of its own (the
    progress bar, which neutralises what it shows itself)."""
    return stream.raw if isinstance(stream, VisibleText) else stream


@contextlib.contextmanager
def visible_output() -> Iterator[None]:
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = VisibleText(out), VisibleText(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    reexec = backend.reexec_argv_env(argv, module="tunedeck.tui.cli")
    if reexec is not None and argv[:1] not in (["--help"], ["-h"], ["--version"]):
        os.execve(reexec[0][0], reexec[0], reexec[1])
    first = next((a for a in argv if not a.startswith("-")), None)
    try:
        if first is not None and first in subcommands():
            with visible_output():
                args = command_parser().parse_args(argv)
                return args.func(args)
        args = app_parser().parse_args(argv)
        return cmd_app(args)
    except UserError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # a disk or permission failure the command did not expect: one line, no traceback
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")


if __name__ == "__main__":
    sys.exit(main())
