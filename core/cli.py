"""The `tunedeck` command: the full-screen app with no subcommand, headless subcommands otherwise.

User mistakes print a message to stderr and exit 1 (usage errors exit 2); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import backend

Handler = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """A mistake the user can fix: printed as one message, exit status 1."""


def _fail(msg: str) -> int:
    print(f"tunedeck: error: {msg}", file=sys.stderr)
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


def cmd_app(args: argparse.Namespace) -> int:
    from tunedeck.tui.app import run_app

    workspace = Path(args.workspace)
    if not workspace.is_dir():
        raise UserError(f"workspace {workspace} is not a directory")
    return run_app(workspace, data=args.data, config=args.config, model=args.model)


# --- config ----------------------------------------------------------------------------------


def add_config_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="create or check a training config (TOML)")
    csub = p.add_subparsers(dest="config_cmd", required=True, metavar="{init,check}")
    init = csub.add_parser("init", help="write a commented starter config")
    init.add_argument("path", help="where to write the TOML file")
    from .config import PRESETS

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
    from .config import preset, save

    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} already exists (use --force to overwrite)")
    save(preset(args.preset, args.data), path, comments=True)
    print(f"wrote {path} (preset {args.preset})")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from .config import ConfigError, load

    try:
        cfg, warnings = load(args.path, args.overrides)
    except ConfigError as e:
        for p in e.problems:
            print(f"{args.path}: {p}", file=sys.stderr)
        print(f"{args.path}: {len(e.problems)} problem(s)", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"{args.path}: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        print(f"{args.path}: ok ({cfg.train.method}, model {cfg.model.path}, data {cfg.data.path})")
    return 0


# --- data (owned by the data engineer) ---


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    from .data import FORMATS

    p = sub.add_parser("data", help="check a dataset file")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{check}")
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


def _load_tokenizer(path: str):
    """Only the tokenizer of a local model directory (mlx-lm's loader, else transformers)."""
    if not Path(path).is_dir():
        raise UserError(f"--model {path}: not a directory (give a local model or tokenizer directory)")
    if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise UserError(f"--model {path}: no tokenizer.json, tokenizer.model or tokenizer_config.json there")
    from .model import ModelError, check_remote_code

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
        return load_tokenizer(Path(path))
    except Exception as e:  # noqa: BLE001 - any loader failure is the user's directory
        raise UserError(f"cannot load a tokenizer from {path}: {e}") from None


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
    w = st["suggested_kto_weights"]
    print(f"  suggested KTO weights: desirable_weight={w['desirable_weight']}, "
          f"undesirable_weight={w['undesirable_weight']}")
    if st["skipped"]:
        print(f"  set aside    {st['skipped']} lines ({st['duplicates']} duplicates)")


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data import DataError, compute_stats, load

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
    st = compute_stats(ds, tokenizer, args.max_seq_len)
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

    # internal: the detached training process
    i = sub.add_parser("_run", help=argparse.SUPPRESS)
    i.add_argument("run_dir")
    i.add_argument("--resume", action="store_true")
    i.set_defaults(func=cmd_internal_run)


def _config_for_run(args: argparse.Namespace) -> tuple[Path, bool]:
    """Create (or, with --resume, check) the run directory; returns (run_dir, resume)."""
    from .config import ConfigError, load, save
    from .runs import RunError, check_writable, is_locked
    from .trainer import prepare_run

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"{run_dir} is not a run directory (no config.toml)")
        if is_locked(run_dir):
            raise UserError(f"{run_dir} is already running")
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


def _preflight(cfg, base: Path) -> None:
    """Refuse bad data or a bad model directory before a run directory is made or a trainer spawned."""
    from .data import DataError
    from .model import ModelError
    from .trainer import InputError, preflight

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
    from . import runs
    from .progress import ProgressPrinter
    from .trainer import Trainer

    workers, hostfile = _check_workers(args)
    run_dir, resume = _config_for_run(args)
    if workers > 1 or hostfile is not None:
        return _train_distributed(args, run_dir, resume, workers, hostfile)
    if args.detach:
        return _report_detached(run_dir, runs.spawn_detached(run_dir, resume=resume), timeout=60)
    print(f"run: {run_dir}", file=sys.stderr)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
    code = Trainer(run_dir, resume=resume, progress=printer).run()
    if printer:
        printer.close()
    info = runs.run_info(run_dir)
    if code != 0 and info.error:
        print(f"tunedeck: error: {info.error}", file=sys.stderr)
    print(run_dir)
    return code


def _report_detached(run_dir: Path, pid: int, timeout: float) -> int:
    """Wait until a detached trainer holds its run; print the run dir, or fail with the log's tail."""
    from . import runs

    if not runs.wait_started(run_dir, pid, timeout=timeout):
        tail = "\n".join(runs.tail_log(run_dir, 15))
        raise UserError(f"training exited at start; {run_dir / 'train.log'}:\n{tail}")
    print(run_dir)
    return 0


def _check_workers(args: argparse.Namespace) -> tuple[int, Path | None]:
    """(ranks, hostfile) from --workers/--hosts, checked against train.batch_size before anything starts."""
    from .config import ConfigError, load
    from .launch import LaunchError, hostfile_hosts

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
        from .launch import first_host_is_here

        if not first_host_is_here(hostfile):
            print(f"tunedeck: warning: the first host in {hostfile} is rank 0, which writes the run directory "
                  "(events, checkpoints, adapters); list this machine first to follow the run from here",
                  file=sys.stderr)
        workers = n
    workers = workers or 1
    if workers > 1 and hostfile is None:
        from .backend import detect

        if detect().kind == "cuda":
            import mlx.core as mx

            from .launch import check_gpu_count

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
    from . import launch, runs
    from .progress import ProgressPrinter

    if args.detach:
        return _report_detached(run_dir, launch.spawn(run_dir, resume, workers, hostfile, detach=True), timeout=180)
    print(f"run: {run_dir} ({workers} workers; their output goes to {run_dir / 'train.log'})", file=sys.stderr)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
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


def cmd_internal_run(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    return Trainer(Path(args.run_dir), resume=args.resume).run()


def cmd_runs(args: argparse.Namespace) -> int:
    from .runs import list_runs

    infos = list_runs(Path(args.root))
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=2))
        return 0
    if not infos:
        print(f"no runs in {args.root}")
        return 0
    print(f"{'RUN':40} {'STATUS':9} {'METHOD':6} {'STEP':>11} {'LOSS':>8} {'VAL':>8}")
    for i in infos:
        loss = f"{i.last_loss:.4f}" if i.last_loss is not None else "-"
        val = f"{i.last_val_loss:.4f}" if i.last_val_loss is not None else "-"
        print(f"{str(i.run_dir):40} {i.status:9} {i.method:6} {f'{i.step}/{i.total_steps}':>11} {loss:>8} {val:>8}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .runs import RunError, stop_run

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
    p.set_defaults(func=cmd_chat)


def _chat_turn(cm, histories: dict[str, list[dict[str, str]]], prompt: str, args: argparse.Namespace) -> None:
    """Stream one reply per history (base first, then the adapter) to stdout; speed to stderr."""
    from .chat import visible

    for name, history in histories.items():
        history.append({"role": "user", "content": prompt})
        if len(histories) > 1:
            print("=== base (adapter off) ===" if name == "base" else "=== adapter ===", flush=True)
        text, speed = "", 0.0
        for chunk in cm.reply(history, adapter=name != "base", max_tokens=args.max_tokens,
                              temperature=args.temperature, top_p=args.top_p):
            text += chunk.text
            speed = chunk.tokens_per_sec
            sys.stdout.write(visible(chunk.text))
            sys.stdout.flush()
        print(flush=True)
        print(f"({speed:.1f} tokens/s)", file=sys.stderr, flush=True)
        history.append({"role": "assistant", "content": text})


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatError, load_chat_model, resolve_target

    if args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    try:
        base, adapter = resolve_target(Path(args.run_dir or args.adapter), args.model)
        cm = load_chat_model(base, adapter)
    except ChatError as e:
        raise UserError(str(e)) from None
    if args.compare and adapter is None:
        raise UserError(f"{args.run_dir or args.adapter} has no adapter to compare with its base")
    histories: dict[str, list[dict[str, str]]] = {"base": [], "adapter": []} if args.compare else {"adapter": []}
    if args.prompt is not None:
        _chat_turn(cm, histories, args.prompt, args)
        return 0
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/clear":
            for h in histories.values():
                h.clear()
        elif line.strip():
            _chat_turn(cm, histories, line.strip(), args)


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
        "export", help="fuse the adapter into the base, or export it as GGUF or a PEFT adapter",
        description="--fuse: base + adapter as one model directory that mlx_lm.load loads, verified by comparing "
        "its logits with base + adapter (a quantized base is de-quantized unless --requantize). --gguf: a "
        "float16 GGUF through mlx-lm's converter (llama/mistral/mixtral; a quantized base is de-quantized "
        "first). --hf: a PEFT LoRA adapter (adapter_model.safetensors + adapter_config.json; A = lora_a.T, "
        "B = lora_b.T, lora_alpha = scale * r) for transformers/PEFT; not for DoRA adapters.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--fuse", metavar="OUT_DIR", help="write a fused model directory")
    what.add_argument("--gguf", metavar="FILE", help="write a GGUF file (.gguf)")
    what.add_argument("--hf", metavar="OUT_DIR", help="write a PEFT (Hugging Face) LoRA adapter directory")
    e.add_argument("--checkpoint", metavar="NAME", help="a checkpoint (step-NNNNNN, 'latest') instead of RUN_DIR/adapters")
    e.add_argument("--model", metavar="PATH", help="base model instead of the run's model.path")
    e.add_argument("--requantize", action="store_true",
                   help="--fuse with a quantized base: keep the fused model quantized (smaller, less exact)")
    e.add_argument("--tolerance", type=float, metavar="X",
                   help="--fuse: max abs logit difference allowed (default: by dtype, relative to the logits)")
    e.add_argument("--force", action="store_true", help="replace an existing output")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_export)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalError, evaluate, format_table

    if args.max_examples < 0 or args.max_tokens < 0:
        raise UserError("--max-examples and --max-tokens must not be negative")
    try:
        report = evaluate(args.run_dir, split=args.split, max_examples=args.max_examples, max_tokens=args.max_tokens,
                          checkpoint=args.checkpoint, model=args.model, progress=_say)
    except EvalError as e:
        raise UserError(str(e)) from None
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_table(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .evaluate import EvalError
    from .export import export_gguf, export_hf, fuse

    try:
        if args.fuse:
            report = fuse(args.run_dir, args.fuse, checkpoint=args.checkpoint, model=args.model,
                          requantize=args.requantize, tolerance=args.tolerance, force=args.force, progress=_say)
        elif args.gguf:
            report = export_gguf(args.run_dir, args.gguf, checkpoint=args.checkpoint, model=args.model,
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
    from .demo import SIZES

    p = sub.add_parser("demo-model", help="build the tiny offline demo model")
    p.add_argument("dir", nargs="?", help="destination (default: the user cache, reused by the app)")
    p.add_argument("--size", choices=list(SIZES), default="tiny", help="architecture (default tiny, ~4M params)")
    p.add_argument("--tokenizer", choices=["demo", "mistral-v3"], default="demo",
                   help="demo: BPE trained on the sample data; mistral-v3: Mistral's real tokenizer (needs mistral-common)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the directory exists")
    p.set_defaults(func=cmd_demo_model)


def cmd_demo_model(args: argparse.Namespace) -> int:
    import shutil

    from . import demo

    dest = Path(args.dir) if args.dir else demo.default_dir()
    if dest.exists():
        if not args.force:
            if (dest / "config.json").is_file():
                print(dest)
                return 0
            raise UserError(f"{dest} exists and is not a model directory (use --force to replace it)")
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        demo.build(dest, size=args.size, seed=args.seed, tokenizer=args.tokenizer,
                   progress=lambda m: print(m, file=sys.stderr))
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    reexec = backend.reexec_argv_env(argv)
    if reexec is not None and argv[:1] not in (["--help"], ["-h"], ["--version"]):
        os.execve(reexec[0][0], reexec[0], reexec[1])
    first = next((a for a in argv if not a.startswith("-")), None)
    try:
        if first is not None and first in subcommands():
            args = command_parser().parse_args(argv)
        else:
            args = app_parser().parse_args(argv)
            args.func = cmd_app
        return args.func(args)
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
