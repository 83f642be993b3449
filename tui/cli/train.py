"""`tunedeck train|runs|stop`: start a run (in the foreground with a progress bar, detached, or over several
workers), list the runs (or compare some side by side: `runs compare`), stop one gracefully.

The trainer and the model loader bring in MLX, so they are imported only on the paths that train: `runs` and
`stop` stay light.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tunedeck.core import launch, orchestrate, runs
from tunedeck.core.backend import detect
from tunedeck.core.compare import CompareError, Comparison, compare
from tunedeck.core.config import Config, ConfigError, load, save
from tunedeck.core.data import DataError
from tunedeck.core.launch import LaunchError, check_gpu_count, first_host_is_here, hostfile_hosts
from tunedeck.core.progress import ProgressPrinter, write_soft
from tunedeck.core.rundir import RunDir
from tunedeck.core.runs import RunError, check_run_files, check_writable, is_locked, list_runs, stop_run
from tunedeck.core.text import one_line
from tunedeck.tui.cli.output import UserError, problem_line, raw_stream


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedeck train")
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
    return p


class RunsParser(argparse.ArgumentParser):
    """`tunedeck runs [ROOT] [--json]`, or `tunedeck runs compare RUN_DIR RUN_DIR ... [--json]` when the first
    argument is `compare` (a runs directory named compare is listed as `runs ./compare`)."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        if args and args[0] == "compare":
            return compare_parser().parse_args(args[1:], namespace)
        return super().parse_args(args, namespace)


def runs_parser() -> argparse.ArgumentParser:
    p = RunsParser(prog="tunedeck runs", epilog="tunedeck runs compare RUN_DIR RUN_DIR [...] [--json]: final and "
                   "best numbers side by side, and the config keys that differ (compare --help)")
    p.add_argument("root", nargs="?", default="runs", help="runs directory (default: ./runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedeck runs compare",
                                description="Two or more runs side by side: status, final and best losses, KTO "
                                            "margin and reward accuracy, trained tokens; then every config key "
                                            "whose value differs between them.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help='one object: {"runs": [...], "config_diff": {key: [values]}}')
    p.set_defaults(func=cmd_compare)
    return p


def stop_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedeck stop")
    p.add_argument("run_dir")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    p.set_defaults(func=cmd_stop)
    return p


PARSERS = {"train": train_parser, "runs": runs_parser, "stop": stop_parser}


def cmd_train(args: argparse.Namespace) -> int:
    workers, hostfile = _check_workers(args)
    run_dir, resume = (_check_resume(args), True) if args.resume else (_new_run(args), False)
    distributed = workers > 1 or hostfile is not None
    if args.detach:
        if distributed:
            return _report_detached(orchestrate.detach(
                run_dir, resume, timeout=180, spawn=lambda: launch.spawn(run_dir, resume, workers, hostfile, detach=True)))
        return _report_detached(orchestrate.detach(run_dir, resume, timeout=60))
    if distributed:
        # progress comes from the run's events (rank 0 writes them)
        banner = f"run: {run_dir} ({workers} workers; their output goes to {run_dir / 'train.log'})"
        return _in_foreground(run_dir, args.quiet, banner, partial(_launch_ranks, run_dir, resume, workers, hostfile),
                              explain_silent_exit=True)
    from tunedeck.core.trainer import Trainer  # MLX

    return _in_foreground(run_dir, args.quiet, f"run: {run_dir}",
                          lambda printer: Trainer(run_dir, resume=resume, progress=printer).run())


def _in_foreground(run_dir: Path, quiet: bool, banner: str, train: Callable[[ProgressPrinter | None], int],
                   explain_silent_exit: bool = False) -> int:
    """`train(printer)` with a progress bar on stderr, then the run's error if it failed, and the run dir on
    stdout. A closed pipe or a vanished terminal silences the display (what follows goes to train.log),
    never training. `explain_silent_exit`: a failure without an error event shows the end of train.log."""
    write_soft(sys.stderr, f"{banner}\n")
    printer = None if quiet else ProgressPrinter(raw_stream(sys.stderr), fallback=run_dir / "train.log")
    code = train(printer)
    if printer:
        printer.close()
    if code != 0:
        info = runs.run_info(run_dir)
        if info.error:
            write_soft(sys.stderr, f"tunedeck: error: {info.error}\n")
        elif explain_silent_exit:
            write_soft(sys.stderr, "tunedeck: error: the training processes exited without finishing; the end of "
                       f"{run_dir / 'train.log'}:\n" + "\n".join(runs.tail_log(run_dir, 15)) + "\n")
    write_soft(sys.stdout, f"{run_dir}\n")
    return code


def _launch_ranks(run_dir: Path, resume: bool, workers: int, hostfile: Path | None,
                  printer: ProgressPrinter | None) -> int:
    """The trainer's ranks through mlx.launch, followed to the end; the exit status from the run's last event."""
    # a closed terminal (SSH drop) must not end the run: the follower and mlx.launch ignore SIGHUP (inherited),
    # the ranks handle it themselves (they keep training; core.trainer)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    proc = launch.spawn(run_dir, resume, workers, hostfile, detach=False)
    return launch.follow(run_dir, proc, printer, on_interrupt=lambda: print(
        "\ntunedeck: stopping: the workers checkpoint after this step (Ctrl-C again to abandon it)", file=sys.stderr))


def _report_detached(outcome: orchestrate.Detached) -> int:
    """The run dir of a detached trainer that holds its run, or fail with the log's tail."""
    if not outcome.started:
        raise UserError(outcome.failure)
    print(outcome.run_dir)
    return 0


def _check_resume(args: argparse.Namespace) -> Path:
    """The --resume run directory, checked (and its config.toml updated with --set) before it restarts."""
    run_dir = Path(args.resume)
    try:
        check_run_files(run_dir)  # a linked or FIFO config.toml gets its own message, not "no config.toml"
    except RunError as e:
        raise UserError(str(e)) from None
    if not RunDir(run_dir).is_run():
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
    return run_dir


def _new_run(args: argparse.Namespace) -> Path:
    """A new run directory for the config, made only once its data and model have been checked."""
    from tunedeck.core.run_prep import prepare_run  # MLX (the model loader)

    config_path = Path(args.config)
    try:
        cfg, warnings = load(config_path, args.overrides)
    except ConfigError as e:
        raise UserError(f"invalid config:\n{e}") from None
    for w in warnings:
        print(f"{config_path}: warning: {w}", file=sys.stderr)
    _preflight(cfg, config_path.parent)
    try:
        return prepare_run(cfg, config_path, config_path.parent / "runs", Path(args.run_dir) if args.run_dir else None)
    except (RunError, OSError) as e:
        raise UserError(str(e)) from None


# keys a resumed run cannot change: the adapter's shape, the base model, and what decides the data split
_RESUME_FIXED_SECTIONS = ("lora.", "model.")
_RESUME_FIXED_KEYS = {"data.path", "data.format", "data.valid_fraction", "data.strict", "data.max_seq_len",
                      "train.method", "train.seed", "train.batch_size", "kto.loss_type"}


def _shapes_the_run(key: str) -> bool:
    return key.startswith(_RESUME_FIXED_SECTIONS) or key in _RESUME_FIXED_KEYS


def _preflight(cfg: Config, base: Path) -> None:
    """Refuse bad data or a bad model directory before a run directory is made or a trainer spawned."""
    from tunedeck.core.model import ModelError  # MLX
    from tunedeck.core.run_prep import InputError, preflight

    try:
        preflight(cfg, base)
    except DataError as e:
        for p in e.problems:
            print(problem_line(p), file=sys.stderr)
        errors = [p for p in e.problems if p.severity == "error"]
        raise UserError(f"data.path {cfg.data.path}: {len(errors)} error(s) in the dataset "
                        "(listed above); nothing was started") from None
    except (InputError, ModelError) as e:
        raise UserError(f"{str(e).rstrip('.')}; nothing was started") from None
    except OSError as e:
        raise UserError(f"cannot check the run's inputs: {e}") from None


def _check_workers(args: argparse.Namespace) -> tuple[int, Path | None]:
    """(ranks, hostfile) from --workers/--hosts, checked against the GPUs and train.batch_size before anything
    starts."""
    hostfile = Path(args.hosts) if args.hosts else None
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    workers = (_hostfile_ranks(hostfile, args.workers) if hostfile is not None else args.workers) or 1
    if workers > 1 and hostfile is None and detect().kind == "cuda":
        import mlx.core as mx  # MLX: only to count this machine's GPUs

        try:
            check_gpu_count(workers, mx.device_count(mx.gpu))
        except LaunchError as e:
            raise UserError(f"{e}; nothing was started") from None
    if workers > 1:
        _check_batch_split(args, workers)
    return workers, hostfile


def _hostfile_ranks(hostfile: Path, workers: int | None) -> int:
    """One rank per host entry; --workers, if given, must agree. Warns when rank 0 is another machine."""
    try:
        n = hostfile_hosts(hostfile)
    except LaunchError as e:
        raise UserError(str(e)) from None
    if workers not in (None, n):
        raise UserError(f"--workers {workers} but {hostfile} lists {n} hosts (one rank per host entry)")
    if not first_host_is_here(hostfile):
        print(f"tunedeck: warning: the first host in {hostfile} is rank 0, which writes the run directory "
              "(events, checkpoints, adapters); list this machine first to follow the run from here",
              file=sys.stderr)
    return n


def _check_batch_split(args: argparse.Namespace, workers: int) -> None:
    """train.batch_size must split evenly over the workers (a config that does not load is reported later)."""
    source = Path(args.resume) / "config.toml" if args.resume else Path(args.config)
    try:
        cfg, _ = load(source, args.overrides)
    except (ConfigError, OSError):
        return  # reported by _check_resume / _new_run
    if cfg.train.batch_size % workers:
        raise UserError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of the number of workers "
                        f"({workers}): each worker takes an equal share of every batch (the global batch stays "
                        f"{cfg.train.batch_size}); nothing was started")


def cmd_runs(args: argparse.Namespace) -> int:
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
    try:
        info = stop_run(Path(args.run_dir), timeout=args.timeout)
    except RunError as e:
        raise UserError(str(e)) from None
    print(f"{args.run_dir}: {info.status} at step {info.step}")
    return 0


def _number(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def compare_rows(c: Comparison) -> list[tuple[str, list[str]]]:
    """The compare table's rows: (name, one cell per run)."""
    r = c.runs
    return [
        ("status", [s.info.status for s in r]),
        ("method", [s.info.method or "-" for s in r]),
        ("steps", [f"{s.info.step}/{s.info.total_steps}" for s in r]),
        ("final loss", [_number(s.final("loss")) for s in r]),
        ("best loss", [_number(s.best("loss")) for s in r]),
        ("final val_loss", [_number(s.final("val_loss")) for s in r]),
        ("best val_loss", [_number(s.best("val_loss")) for s in r]),
        ("final margin", [_number(s.final("margin")) for s in r]),
        ("final reward accuracy", [_number(s.final("reward_accuracy"), ".3f") for s in r]),
        ("tokens trained", [str(s.tokens_trained) for s in r]),
    ]


def compare_text(c: Comparison) -> str:
    """The table, one column per run, then the config keys whose values differ (in the same columns)."""
    diff = [(key, [one_line(str(v)) for v in values]) for key, values in c.config_diff.items()]
    rows = [(name, [one_line(v) for v in cells]) for name, cells in compare_rows(c)]
    head = [one_line(s.label) for s in c.runs]
    first = max(len(name) for name, _ in [*rows, *diff, ("", [])])
    widths = [max(len(cells[i]) for _, cells in [("", head), *rows, *diff]) for i in range(len(head))]

    def line(name: str, cells: list[str]) -> str:
        return "  ".join([name.ljust(first), *(v.ljust(w) for v, w in zip(cells, widths, strict=True))]).rstrip()

    out = [line("", head), *(line(name, cells) for name, cells in rows), ""]
    if diff:
        out += ["config keys that differ:", *(line(key, cells) for key, cells in diff)]
    else:
        out.append("config: no key differs")
    return "\n".join(out)


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        c = compare([Path(d) for d in args.run_dirs])
    except CompareError as e:
        raise UserError(str(e)) from None
    print(json.dumps(c.to_json(), indent=2) if args.json else compare_text(c))
    return 0
