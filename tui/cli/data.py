"""`tunedeck data check|show|convert|audit`: validate a dataset and print its stats, print one example's tokens,
rewrite its tool calls in the other form, or find the examples whose labels look wrong (core.audit)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunedeck.core.convert import TARGETS, convert
from tunedeck.core.data import FORMATS, DataError, compute_stats, load
from tunedeck.core.progress import write_soft
from tunedeck.core.template import TRAIN_ON, TemplateError, encode_example, token_pieces
from tunedeck.core.text import one_line, visible
from tunedeck.tui.cli.output import UserError, problem_line, raw_stream

if TYPE_CHECKING:  # the audit loads MLX: only `data audit` imports it
    from tunedeck.core.audit import AuditStatus, FoldStatus, Suspect


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedeck data")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{check,show,convert,audit}")
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
    check.set_defaults(func=cmd_check)
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
    show.set_defaults(func=cmd_show)
    conv = dsub.add_parser(
        "convert", help="rewrite a dataset with native (structured) tool calls, or back to calls in the text",
        description="Convert tool calls between the content-embedded form (the call JSON as the assistant's "
        "text) and the native form (structured tool_calls, tool results naming their call). The input must "
        "check clean; the output (JSONL) is written atomically; what could not be converted is listed.")
    conv.add_argument("src", metavar="IN")
    conv.add_argument("dest", metavar="OUT")
    conv.add_argument("--to", choices=TARGETS, required=True, help="the form to write")
    conv.set_defaults(func=cmd_convert)
    _audit_parser(dsub)
    return p


def _audit_parser(dsub: argparse._SubParsersAction) -> None:
    audit = dsub.add_parser(
        "audit", help="rank the examples whose desirable/undesirable label looks wrong",
        description="Score every example of a config's (or a run's) dataset with a model that did not train on it: "
        "K-fold cross-fitting, a short KTO adapter per fold trained on the other folds, each example scored by its "
        "held-out implicit reward beta*(log p_adapter - log p_base). score = -reward for a desirable example, "
        "+reward for an undesirable one: higher = more suspicious. The folds are detached runs, so the audit goes "
        "on if the terminal goes away; the same command again rejoins it, keeps finished folds and resumes the "
        "others. Ctrl-C stops it (the fold being trained checkpoints first).")
    audit.add_argument("source", metavar="CONFIG|RUN_DIR", help="a training config (TOML), or a run directory")
    audit.add_argument("--folds", type=int, default=2, metavar="K", help="folds (default 2; at least 2)")
    audit.add_argument("--iters", type=int, metavar="N",
                       help="training steps per fold (default: the config's train.iters, at most 60)")
    audit.add_argument("--top", type=int, metavar="N", help="show the N most suspicious (default 20; --json: all)")
    audit.add_argument("--audit-dir", metavar="DIR",
                       help="where the audit goes (default: audits/<config>-k<K>-<plan hash> beside the config)")
    audit.add_argument("--json", action="store_true", help="print one JSON object; `suspects` most suspicious first")
    audit.set_defaults(func=cmd_audit)


PARSERS = {"data": parser}


def _load_tokenizer(path: str) -> Any:
    """Only the tokenizer of a local model directory (mlx-lm's loader, else transformers)."""
    if not Path(path).is_dir():
        raise UserError(f"--model {path}: not a directory (give a local model or tokenizer directory)")
    if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise UserError(f"--model {path}: no tokenizer.json, tokenizer.model or tokenizer_config.json there")
    # MLX: only when a tokenizer is asked for; `data check` without --model never loads it
    from tunedeck.core.model import ModelError, check_remote_code, check_template

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
    try:
        check_template(tok)  # a template that loops or explodes fails here, with its file and the limit
    except ModelError as e:
        raise UserError(str(e)) from None
    return tok


def _print_stats(st: dict[str, Any]) -> None:
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


def _unreadable(args: argparse.Namespace, e: DataError) -> int:
    """A dataset that cannot be read at all: every problem (or one JSON document), exit 1."""
    if args.json:
        print(json.dumps({"ok": False, "path": args.path, "format": None, "total": 0, "desirable": 0,
                          "undesirable": 0, "errors": [p.to_dict() for p in e.problems], "warnings": []},
                         indent=2))
    else:
        for p in e.problems:
            print(problem_line(p))
    print(f"{args.path}: cannot check the dataset", file=sys.stderr)
    return 1


def cmd_check(args: argparse.Namespace) -> int:
    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise UserError("--max-seq-len must be a positive number")
    try:
        ds = load(args.path, format=args.format, strict=False)
    except DataError as e:
        return _unreadable(args, e)
    tokenizer = _load_tokenizer(args.model) if args.model else None
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
            print(problem_line(p))
        if ok:
            _print_stats(st)
    lines = len({p.line for p in ds.errors})
    if ds.errors:
        print(f"{args.path}: {len(ds.errors)} error(s) on {lines} line(s), {len(ds.warnings)} warning(s)"
              + ("; those lines were set aside" if ok else ""), file=sys.stderr)
    return 0 if ok else 1


def _show_tokenizer(model: str | None) -> Any:
    if model:
        return _load_tokenizer(model)
    from tunedeck.core import demo  # NumPy: only `data show` without --model needs the demo model

    return _load_tokenizer(str(demo.ensure(random=True)))  # its tokenizer is the demo model's either way


def cmd_show(args: argparse.Namespace) -> int:
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


def cmd_convert(args: argparse.Namespace) -> int:
    if Path(args.src).resolve() == Path(args.dest).resolve():
        raise UserError(f"{args.dest}: the output must not be the input (write another file)")
    try:
        report = convert(args.src, args.dest, args.to)
    except DataError as e:
        for p in e.problems:
            print(problem_line(p))
        raise UserError(f"{args.src}: fix these problems first (nothing was written)") from None
    except OSError as e:
        raise UserError(f"{args.dest}: cannot write: {e.strerror or e}") from None
    for why in report.left:
        print(f"{args.src}:{why}")
    print(f"{args.dest}: {report.records} records, {report.calls} tool calls converted to {args.to}"
          + (f", {len(report.left)} left as they were" if report.left else "")
          + (f"; copied the tool schemas to {report.tools_copied}" if report.tools_copied else ""))
    return 0


# --- audit -----------------------------------------------------------------------------------

AUDIT_POLL = 1.0  # seconds between looks at the audit's folds
AUDIT_TOP = 20
PREVIEW = 60  # characters of each completion in the table


def cmd_audit(args: argparse.Namespace) -> int:
    from tunedeck.core.audit import AuditError, load_results, read_results, start_audit, stop_audit  # MLX

    if args.top is not None and args.top < 1:
        raise UserError(f"--top must be at least 1 (got {args.top})")
    try:
        audit_dir = start_audit(args.source, args.folds, args.audit_dir, args.iters)
    except AuditError as e:
        raise UserError(str(e)) from None
    write_soft(sys.stderr, f"audit: {audit_dir}\n")
    try:
        status = _follow_audit(audit_dir)
    except KeyboardInterrupt:
        write_soft(sys.stderr, "\ntunedeck: stopping the audit: the fold being trained checkpoints first\n")
        stop_audit(audit_dir)
        write_soft(sys.stderr, "stopped; the same command resumes it\n")
        return 130
    if status.state != "done":
        why = f": {status.message}" if status.message else ""
        raise UserError(f"the audit {status.state}{why} ({audit_dir / 'audit.log'}); the same command resumes it")
    results, suspects = read_results(audit_dir), load_results(audit_dir)
    top = args.top or (len(suspects) if args.json else AUDIT_TOP)
    if args.json:
        settings = {k: v for k, v in results.items() if k != "suspects"}
        print(json.dumps({"audit_dir": str(audit_dir.resolve()), **settings,
                          "suspects": [{**s.to_json(), "preview": one_line(s.preview)} for s in suspects[:top]]},
                         ensure_ascii=False))
        return 0
    _print_suspects(results, suspects[:top])
    return 0


def _follow_audit(audit_dir: Path) -> AuditStatus:
    """Follow the audit on stderr until its driver ends (_AuditDisplay); its last status."""
    from tunedeck.core.audit import audit_status

    display = _AuditDisplay()
    while True:
        status = audit_status(audit_dir)
        display.update(status)
        if not status.active:
            display.close()
            return status
        time.sleep(AUDIT_POLL)


class _AuditDisplay:
    """An audit's progress: a line per fold, then one per fold scored. The fold in training is redrawn in place
    on a terminal; a pipe gets a line for each of its stages and each tenth of its steps."""

    def __init__(self) -> None:
        self.err = raw_stream(sys.stderr)
        self.tty = self.err.isatty()
        self.open = False  # a line is being redrawn in place
        self.ended: set[tuple[str, int]] = set()  # the lines printed for good
        self.last: tuple[str, tuple[Any, ...]] | None = None  # the live line's text and stage

    def update(self, status: AuditStatus) -> None:
        n = len(status.folds)
        for f in status.folds:
            if ("fold", f.fold) in self.ended:
                continue
            if f.status == "finished" or not status.active:
                self._final(("fold", f.fold), _fold_line(f, n, live=False))
                continue
            steps = 10 * f.step // f.total_steps if f.total_steps else 0
            self._live(_fold_line(f, n, live=True), (f.fold, f.status, f.reference is None, steps))
            break  # the later folds wait for this one
        if status.phase == "scoring" and status.fold and ("scoring", status.fold) not in self.ended:
            self._final(("scoring", status.fold), f"scoring fold {status.fold}/{n}: its held-out examples, with its "
                        "adapter and with the base model")

    def _live(self, text: str, stage: tuple[Any, ...]) -> None:
        if self.last is not None and (self.last[0] == text or (not self.tty and self.last[1] == stage)):
            return
        self.last = (text, stage)
        if self.tty:
            self._write("\r" + one_line(text) + "\x1b[K")
            self.open = True
        else:
            self._write(one_line(text) + "\n")

    def _final(self, key: tuple[str, int], text: str) -> None:
        self._write(("\r" if self.open else "") + one_line(text) + ("\x1b[K" if self.open else "") + "\n")
        self.ended.add(key)
        self.open, self.last = False, None

    def close(self) -> None:
        if self.open:
            self._write("\n")
            self.open = False

    def _write(self, text: str) -> None:
        write_soft(self.err, text)


def _fold_line(f: FoldStatus, folds: int, live: bool) -> str:
    """`fold K/N: ...`: what a fold's run is doing (`live`: the audit's driver is on it), or how it ended."""
    head = f"fold {f.fold}/{folds}: "
    if f.status == "finished":
        return head + f"trained {f.step} steps"
    if f.status in ("running", "paused") and f.total_steps:
        loss = f", loss {f.last_loss:.4f}" if f.last_loss is not None else ""
        return head + f"step {f.step}/{f.total_steps}{loss}" + (" (paused)" if f.status == "paused" else "")
    if f.status in ("running", "paused") and f.reference:
        return head + f"KTO reference pass {f.reference[0]}/{f.reference[1]} sequences"
    if live:
        return head + "starting (loading the model)"
    if f.status == "new":
        return head + "not started"
    return head + f.status + (f": {f.error}" if f.error else "")


def _print_suspects(results: dict[str, Any], suspects: list[Suspect]) -> None:
    print(f"{one_line(str(results.get('dataset')))}: {results.get('examples')} examples, each scored by the adapter "
          f"of one of {results.get('folds')} folds that did not train on it ({results.get('iters')} KTO steps, "
          f"beta {results.get('beta')})")
    print("score: higher = more suspicious (-reward if desirable, +reward if undesirable)")
    print(f"{'rank':>5} {'line':>6}  {'label':<11} {'score':>9} {'reward':>9} {'fold':>4}  completion")
    for s in suspects:
        label = "desirable" if s.label else "undesirable"
        text = one_line(s.preview)
        text = text[:PREVIEW] + ("…" if len(text) > PREVIEW else "")
        print(f"{s.rank:>5} {s.line:>6}  {label:<11} {s.score:>9.4f} {s.reward:>9.4f} {s.fold:>4}  {text}")
