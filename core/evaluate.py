"""Held-out scoring of a run: the base model (adapter off) against the adapter.

Examples: the run's validation split, recomputed exactly as the trainer does
(`data.split(examples, data.valid_fraction, train.seed)`, second half, both labels kept), or any
dataset FILE; `max_examples` keeps a label-stratified subset in file order.

Metrics (each for `base` and `adapter`, with `delta` = adapter − base):

- ``loss``: mean negative log-likelihood per completion token over the desirable examples
  (total NLL / total completion tokens, as the trainer's SFT validation loss); ``perplexity`` = e^loss.
- ``loss_undesirable``: the same over the undesirable completions (KTO should raise it).
- ``reward_desirable`` / ``reward_undesirable``: mean KTO implicit reward β·(log π − log π_ref)
  per example, π = adapter, π_ref = base, sequence log-probs summed over completion tokens,
  β = the run's kto.beta. ``reward_margin`` = mean desirable − mean undesirable reward.
  ``reward_accuracy``: fraction of examples whose reward has the sign of their label (desirable > 0,
  undesirable < 0). For the base these are 0 by definition and reported as n/a (None).
- ``tool_call_valid``: over the held-out desirable examples whose completion is a tool call, the
  fraction of generated answers (greedy, `max_tokens`) that are a well-formed call
  (`core.toolcalls.check_tool_call`: valid JSON in the dataset's format, a known tool, every
  required argument, schema types where tools.json gives them).
- ``tool_name_match``: over the same prompts, the fraction whose generated call (parsed, valid or
  not) names the reference completion's tool.
- ``tool_call_unexpected``: over the desirable examples whose completion is plain text, the
  fraction of answers that contain a parseable tool call anyway.

Generation runs only for tool-use data (a desirable completion parses as a call) and `max_tokens`
> 0; it uses `mlx_lm.batch_generate` in chunks, falling back to sequential `mlx_lm.generate`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import backend, checkpoint_files, data, dequantize, toolcalls
from .config import Config, ConfigError
from .config import load as load_config
from .fsutil import atomic_write_text
from .model import ADAPTER_CONFIG, ADAPTER_FILE, ModelError, adapters_disabled, check_adapter_files, load_base
from .rundir import RunDir

if TYPE_CHECKING:
    from .batching import Sequences

EVAL_FILE = "eval.json"
GEN_CHUNK = 16  # prompts per batch_generate call (progress is reported between chunks)
Progress = Callable[[str], None]

DEFINITIONS = {
    "loss": "mean NLL per completion token, desirable examples",
    "perplexity": "exp(loss)",
    "loss_undesirable": "mean NLL per completion token, undesirable examples",
    "reward_desirable": "mean beta*(logp_adapter - logp_base) over desirable examples (summed completion logps)",
    "reward_undesirable": "mean beta*(logp_adapter - logp_base) over undesirable examples",
    "reward_margin": "reward_desirable - reward_undesirable",
    "reward_accuracy": "fraction of examples with reward > 0 if desirable, < 0 if undesirable",
    "tool_call_valid": "fraction of answers that are a well-formed tool call, prompts whose reference is a call",
    "tool_name_match": "fraction of answers calling the reference's tool, prompts whose reference is a call",
    "tool_call_unexpected": "fraction of answers containing a tool call, prompts whose reference is plain text",
}
LABELS = {
    "loss": "loss (desirable, /token)",
    "perplexity": "perplexity (desirable)",
    "loss_undesirable": "loss (undesirable, /token)",
    "reward_desirable": "reward desirable",
    "reward_undesirable": "reward undesirable",
    "reward_margin": "reward margin",
    "reward_accuracy": "reward accuracy",
    "tool_call_valid": "tool call well-formed",
    "tool_name_match": "tool name = reference",
    "tool_call_unexpected": "tool call when none due",
}
PERCENT = {"reward_accuracy", "tool_call_valid", "tool_name_match", "tool_call_unexpected"}


class EvalError(Exception):
    """A run, checkpoint, model or dataset that cannot be evaluated or exported, with the reason."""


# --- the run's model + adapter (shared with core.export) -------------------------------------


def run_config(run_dir: Path) -> Config:
    """The run's frozen config; EvalError if `run_dir` is not a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is not a directory")
    if not RunDir(run_dir).is_run():
        raise EvalError(f"{run_dir} is not a run directory (no config.toml)")
    try:
        cfg, _ = load_config(run_dir / "config.toml")
    except ConfigError as e:
        raise EvalError(f"{run_dir / 'config.toml'}: invalid config:\n{e}") from None
    return cfg


def adapter_dir(run_dir: Path, checkpoint: str | None = None) -> Path:
    """RUN_DIR/adapters, or a checkpoint: "latest", a name under checkpoints/, or a directory."""
    run_dir = Path(run_dir)
    ckroot = run_dir / "checkpoints"
    names = sorted(p.name for p in ckroot.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) \
        if ckroot.is_dir() else []
    if checkpoint is None:
        path = run_dir / "adapters"
        if not (path / ADAPTER_FILE).is_file() or not (path / ADAPTER_CONFIG).is_file():
            raise EvalError(f"{run_dir} has no adapters yet (no {ADAPTER_FILE} in {path}): no checkpoint has "
                            "been saved; wait for train.save_every steps, or stop the run to save one")
        return path
    if checkpoint == "latest":
        path = checkpoint_files.latest_checkpoint(run_dir)
        if path is None:
            raise EvalError(f"{run_dir} has no verified checkpoint yet")
        return path
    path = ckroot / checkpoint if (ckroot / checkpoint).is_dir() else Path(checkpoint)
    if not path.is_dir():
        raise EvalError(f"no checkpoint {checkpoint!r} in {ckroot} (have: {', '.join(names) or 'none'})")
    if not (path / ADAPTER_FILE).is_file() or not (path / ADAPTER_CONFIG).is_file():
        raise EvalError(f"{path} holds no adapter ({ADAPTER_FILE} + {ADAPTER_CONFIG})")
    if (path / "manifest.json").exists() and not checkpoint_files.verify_checkpoint(path):
        raise EvalError(f"checkpoint {path} fails its manifest check (incomplete or corrupted)")
    return path


@dataclass
class RunModel:
    """A run's base model with its adapter loaded (LoRA layers in place), in eval mode."""

    model: nn.Module
    tokenizer: Any
    model_dir: Path
    cfg: Config
    adapter_dir: Path
    adapter_config: dict[str, Any]
    dtype: str


def load_run_model(run_dir: Path, checkpoint: str | None = None, model: str | None = None) -> RunModel:
    """Load the base exactly as the trainer did (dtype, quantization), then the run's adapter.

    `model` replaces the run's model.path (e.g. a moved or fused base); it is used as given
    (no quantization on load).
    """
    from mlx_lm.tuner.utils import load_adapters

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    adir = adapter_dir(run_dir, checkpoint)
    mcfg = replace(cfg.model, path=model, quantize=0) if model else cfg.model
    dtype = backend.dtype_for(backend.detect(), cfg.model.dtype)
    try:
        base, tok, model_dir = load_base(mcfg, dtype)  # refuses a base with custom code before anything else
        check_adapter_files(adir)
    except ModelError as e:
        raise EvalError(str(e)) from None
    try:
        acfg = json.loads((adir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        load_adapters(base, str(adir))
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise EvalError(f"adapter {adir} does not fit model {mcfg.path}: {e}") from None
    base.eval()
    mx.eval(base.parameters())
    dequantize.use(base, dequantize.chosen(cfg.model.quantized_matmul, backend.detect().kind))
    return RunModel(base, tok, model_dir, cfg, adir, acfg, dtype)


# --- examples --------------------------------------------------------------------------------


def held_out(cfg: Config, split: str = "valid") -> tuple[list[data.Example], list[data.Example], Path]:
    """(held-out examples, every example of their file, the file): the run's validation split as the
    trainer computes it, or every example of a dataset FILE."""
    if split == "valid":
        path = Path(cfg.data.path)
        fmt = None if cfg.data.format == "auto" else cfg.data.format
        try:
            ds = data.load(path, fmt, strict=cfg.data.strict, tools=cfg.data.tools or None)
        except data.DataError as e:
            raise EvalError(f"cannot load the run's dataset {path}:\n{e}") from None
        except OSError as e:
            raise EvalError(f"cannot read the run's dataset {path}: {e.strerror}") from None
        _, valid = data.split(ds.examples, cfg.data.valid_fraction, cfg.train.seed)
        if not valid:
            raise EvalError(f"the run's validation split is empty (data.valid_fraction = "
                            f"{cfg.data.valid_fraction}); pass --split FILE")
        return valid, ds.examples, path
    path = Path(split)
    if not path.is_file():
        raise EvalError(f"--split {split}: no such file (use 'valid' or a dataset file)")
    try:
        ds = data.load(path, None, strict=True)
    except data.DataError as e:
        raise EvalError(f"cannot load {path}:\n{e}") from None
    if not ds.examples:
        raise EvalError(f"{path} has no examples")
    return ds.examples, ds.examples, path


def subset(examples: list[data.Example], n: int) -> list[data.Example]:
    """At most n examples, both labels in proportion (at least one of each when n >= 2), file order."""
    if n <= 0 or len(examples) <= n:
        return examples
    pos = [i for i, e in enumerate(examples) if e.label]
    neg = [i for i, e in enumerate(examples) if not e.label]
    k = round(n * len(pos) / len(examples))
    if pos and neg and n >= 2:
        k = min(max(k, 1), n - 1)
    k = min(k, len(pos))
    keep = set(pos[:k]) | set(neg[: n - k])
    return [e for i, e in enumerate(examples) if i in keep]


# --- scoring ---------------------------------------------------------------------------------


def _mean(xs: np.ndarray) -> float | None:
    return float(xs.mean()) if len(xs) else None


def _loss(logps: np.ndarray, ntoks: np.ndarray, sel: np.ndarray) -> float | None:
    n = ntoks[sel].sum()
    return float(-logps[sel].sum() / n) if n > 0 else None


def _generate(model: nn.Module, tok: Any, prompts: list[list[int]], max_tokens: int, state: dict[str, str],
              report: Callable[[int], None]) -> list[str]:
    """Greedy answers to token-id prompts: batch_generate in chunks, else one by one."""
    import mlx_lm

    out: list[str] = []
    i = 0
    while i < len(prompts):
        if state.get("method") != "generate":
            chunk = prompts[i : i + GEN_CHUNK]
            try:
                texts = mlx_lm.batch_generate(model, tok, chunk, max_tokens=max_tokens).texts
                state["method"] = "batch_generate"
            except Exception as e:  # noqa: BLE001 - any failure: fall back to the plain path
                state["method"] = "generate"
                state["fallback_reason"] = f"{type(e).__name__}: {e}"
                continue
            out += texts
            i += len(chunk)
        else:
            out.append(mlx_lm.generate(model, tok, prompts[i], max_tokens=max_tokens))
            i += 1
        report(len(out))
    return out


def score_tool_calls(answers: dict[str, list[str]], references: list[str], box: toolcalls.Toolbox,
                     lines: list[int] | None = None) -> tuple[dict[str, dict[str, float | None]],
                                                          dict[str, dict[str, int]], list[dict[str, Any]]]:
    """Tool-call metrics of each model's answers (same order as the desirable `references`).

    Returns (metrics {name: {model: value}}, validation codes per model over the prompts whose
    reference is a call, one detail record per prompt).
    """
    refs = [toolcalls.parse_tool_call(r, box.format) for r in references]
    is_call = np.array([r is not None for r in refs], dtype=bool)
    metrics: dict[str, dict[str, float | None]] = {}
    reasons: dict[str, dict[str, int]] = {}
    details: list[dict[str, Any]] = [
        {"line": lines[i] if lines else i + 1, "reference_tool": r.name if r else None} for i, r in enumerate(refs)
    ]
    for which, texts in answers.items():
        checks = [toolcalls.check_tool_call(a, box) for a in texts]
        valid = np.array([c.ok for c in checks], dtype=bool)
        named = np.array([r is not None and c.call is not None and c.call.name == r.name
                          for c, r in zip(checks, refs)], dtype=bool)
        any_call = np.array([c.call is not None for c in checks], dtype=bool)
        metrics.setdefault("tool_call_valid", {})[which] = _mean(valid[is_call])
        metrics.setdefault("tool_name_match", {})[which] = _mean(named[is_call])
        metrics.setdefault("tool_call_unexpected", {})[which] = _mean(any_call[~is_call])
        reasons[which] = dict(Counter(c.code for c, r in zip(checks, refs) if r is not None))
        for d, c, text in zip(details, checks, texts):
            d[which] = {"code": c.code, "reason": c.reason, "tool": c.call.name if c.call else None,
                        "text": text[:500]}
    return metrics, reasons, details


def evaluate(run_dir: str | Path, split: str = "valid", max_examples: int = 0, max_tokens: int = 128,
             checkpoint: str | None = None, model: str | None = None, progress: Progress | None = None,
             write: bool = True) -> dict[str, Any]:
    """Score base vs adapter on held-out examples; returns the report (also written to RUN_DIR/eval.json)."""
    from .batching import tokenize

    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    adir = adapter_dir(run_dir, checkpoint)  # fail fast, before loading anything
    examples, everything, data_path = held_out(cfg, split)
    examples = subset(examples, max_examples)
    labels = np.array([e.label for e in examples], dtype=bool)
    say(f"eval: {len(examples)} examples ({int(labels.sum())} desirable, {int((~labels).sum())} undesirable) "
        f"from {'the validation split of ' if split == 'valid' else ''}{data_path}")
    say(f"eval: loading {model or cfg.model.path} + adapter {adir}")
    rm = load_run_model(run_dir, checkpoint, model)
    seqs = tokenize(rm.tokenizer, examples, cfg.data.max_seq_len, False, cfg.train.seed,
                    string_format=cfg.data.string_format)
    ntoks = np.array([len(s) - max(int(st), 1) for s, st in zip(seqs.ids, seqs.starts)], dtype=np.float64)
    logps = _log_probs(rm.model, seqs, max(1, cfg.train.batch_size * 2), say, cfg.train.grad_checkpoint)
    metrics = _likelihood_metrics(logps, ntoks, labels, cfg.kto.beta)
    box = _toolbox(everything, data_path)
    desirable = [e for e in examples if e.label]
    tool_info, details = _tool_use(rm, box, desirable, max_tokens, cfg.data.max_seq_len, metrics, say)
    for key in metrics:
        b, a = metrics[key]["base"], metrics[key]["adapter"]
        metrics[key]["delta"] = a - b if a is not None and b is not None else None

    report = {
        "run_dir": str(run_dir.resolve()),
        "adapter": str(adir.resolve()),
        "model": model or cfg.model.path,
        "split": split,
        "data": str(data_path),
        "examples": len(examples),
        "desirable": int(labels.sum()),
        "undesirable": int((~labels).sum()),
        "completion_tokens": int(ntoks.sum()),
        "beta": cfg.kto.beta,
        "max_tokens": max_tokens,
        "metrics": metrics,
        "definitions": {k: DEFINITIONS[k] for k in metrics},
        "tool_use": tool_info,
        "generations": details,
        "seconds": round(time.perf_counter() - t0, 2),
        "time": round(time.time(), 3),
    }
    if write:
        save_report(run_dir, report)
        say(f"eval: wrote {run_dir / EVAL_FILE}")
    return report


def _log_probs(net: nn.Module, seqs: Sequences, batch_size: int, say: Progress, stepwise: bool) -> dict[str, np.ndarray]:
    """Each sequence's completion log-prob (summed over its tokens), by the base (adapter off) and the adapter;
    `stepwise` (the run's train.grad_checkpoint): one layer per evaluation, bounded as the run's steps."""
    from .reference import compute

    logps: dict[str, np.ndarray] = {}
    for which in ("base", "adapter"):
        done = [0]

        def tick(n: int, which: str = which, done: list[int] = done) -> None:
            done[0] += n
            say(f"eval: log-probs ({which}) {done[0]}/{len(seqs.ids)}")

        if which == "base":
            with adapters_disabled(net):
                logps[which] = compute(net, seqs.ids, seqs.starts, batch_size, tick, stepwise=stepwise).astype(np.float64)
        else:
            logps[which] = compute(net, seqs.ids, seqs.starts, batch_size, tick, stepwise=stepwise).astype(np.float64)
    return logps


def _likelihood_metrics(logps: dict[str, np.ndarray], ntoks: np.ndarray, labels: np.ndarray,
                        beta: float) -> dict[str, dict[str, float | None]]:
    """Loss, perplexity and undesirable loss of each model; the adapter's KTO rewards (the base's are n/a)."""
    rewards = beta * (logps["adapter"] - logps["base"])
    metrics: dict[str, dict[str, float | None]] = {}
    for which in ("base", "adapter"):
        loss = _loss(logps[which], ntoks, labels)
        metrics.setdefault("loss", {})[which] = loss
        metrics.setdefault("perplexity", {})[which] = math.exp(loss) if loss is not None and loss < 700 else None
        metrics.setdefault("loss_undesirable", {})[which] = _loss(logps[which], ntoks, ~labels)
    rd, ru = _mean(rewards[labels]), _mean(rewards[~labels])
    correct = np.where(labels, rewards > 0, rewards < 0)
    for key, value in (("reward_desirable", rd), ("reward_undesirable", ru),
                       ("reward_margin", rd - ru if rd is not None and ru is not None else None),
                       ("reward_accuracy", float(correct.mean()) if len(correct) else None)):
        metrics[key] = {"base": None, "adapter": value}
    return metrics


def _toolbox(everything: list[data.Example], data_path: Path) -> toolcalls.Toolbox:
    """The dataset's tool-call format and tools: from the whole file, not just the held-out rows (without
    tools.json, the tools named by the desirable completions)."""
    try:
        schemas = next((e.tools for e in everything if e.tools), None)  # a native-format file's tools
        return toolcalls.toolbox([e.completion for e in everything if e.label], data_path, schemas)
    except ValueError as e:
        raise EvalError(str(e)) from None


def _tool_use(rm: RunModel, box: toolcalls.Toolbox, desirable: list[data.Example], max_tokens: int, max_seq_len: int,
              metrics: dict[str, dict[str, float | None]], say: Progress) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The generation-based tool-use score (greedy answers of both models to the desirable prompts): its
    metrics go into `metrics`; returns (the report's tool_use section, one detail record per prompt)."""
    tool_info: dict[str, Any] = {"format": box.format, "tools_source": box.source, "tools": box.names}
    if box.format is None:
        tool_info["skipped"] = "no tool calls in the dataset's desirable completions"
    elif max_tokens <= 0:
        tool_info["skipped"] = "--max-tokens 0"
    elif not desirable:
        tool_info["skipped"] = "no desirable held-out examples"
    if "skipped" in tool_info:
        for key in ("tool_call_valid", "tool_name_match", "tool_call_unexpected"):
            metrics[key] = {"base": None, "adapter": None}
        return tool_info, []
    refs = [toolcalls.parse_tool_call(e.completion, box.format) for e in desirable]
    prompts = _generation_prompts(rm.tokenizer, desirable, max_seq_len - max_tokens)
    gen_state: dict[str, str] = {}
    answers: dict[str, list[str]] = {}
    for which in ("base", "adapter"):
        def report(n: int, which: str = which) -> None:
            say(f"eval: generating ({which}) {n}/{len(prompts)}")

        if which == "base":
            with adapters_disabled(rm.model):
                answers[which] = _generate(rm.model, rm.tokenizer, prompts, max_tokens, gen_state, report)
        else:
            answers[which] = _generate(rm.model, rm.tokenizer, prompts, max_tokens, gen_state, report)
    scores, reasons, details = score_tool_calls(answers, [e.completion for e in desirable], box,
                                                [e.line for e in desirable])
    metrics.update(scores)
    tool_info.update(prompts=len(prompts), reference_calls=sum(r is not None for r in refs),
                     generation=gen_state.get("method"), reasons=reasons)
    if "fallback_reason" in gen_state:
        tool_info["batch_generate_error"] = gen_state["fallback_reason"]
    return tool_info, details


def _generation_prompts(tok: Any, desirable: list[data.Example], room: int) -> list[list[int]]:
    """Each example's prompt ids, cut from the left to `room` tokens (at least 8): data.max_seq_len less the
    answer's max_tokens."""
    from .template import Encoded, encode_prompt, truncate

    bos = getattr(tok, "bos_token_id", None)
    limit = max(room, 8)
    prompts = []
    for e in desirable:
        ids = encode_prompt(tok, e.prompt, e.tools)
        prompts.append(truncate(Encoded(ids, len(ids)), limit, bos).ids)
    return prompts


def save_report(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write `report` to RUN_DIR/eval.json atomically (the old file stays whole if this fails)."""
    path = Path(run_dir) / EVAL_FILE
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def _fmt(key: str, v: float | None, delta: bool = False) -> str:
    if v is None:
        return "n/a" if not delta else "—"
    if key in PERCENT:
        return f"{100 * v:+.1f}%" if delta else f"{100 * v:.1f}%"
    if key == "perplexity":
        return f"{v:+.2f}" if delta else f"{v:.2f}"
    return f"{v:+.4f}" if delta else f"{v:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """metric | base | adapter | delta, one row per metric."""
    rows = [("metric", "base", "adapter", "delta")]
    for key, m in report["metrics"].items():
        rows.append((LABELS.get(key, key), _fmt(key, m["base"]), _fmt(key, m["adapter"]),
                     _fmt(key, m["delta"], delta=True)))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    tu = report["tool_use"]
    head = (f"{report['examples']} held-out examples ({report['desirable']} desirable, "
            f"{report['undesirable']} undesirable), beta {report['beta']}")
    tail = (f"tool calls: format {tu['format']}, tools from {tu['tools_source']}, "
            f"{tu['reference_calls']} of {tu['prompts']} prompts expect a call, via {tu['generation']}"
            if "skipped" not in tu else f"tool-call score skipped: {tu['skipped']}")
    return "\n".join([head, *lines, tail])
