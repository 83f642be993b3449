"""A label audit's plan: what it scores (the dataset of a config or of a run), how the examples are split
into folds, and each fold's training run, all written into the audit directory before anything trains.

```
AUDIT_DIR/plan.json                   the settings, and each example's 1-based line, label and fold
AUDIT_DIR/data/fold-N.train.jsonl     fold N's training data: the other folds' examples, lines copied from the dataset
AUDIT_DIR/data/fold-N.heldout.jsonl   the examples fold N scores (none of them is in its training data)
AUDIT_DIR/fold-N/                     fold N's run directory (core.rundir), trained by the detached trainer
```

The user's dataset is only read. A plan is a pure function of the dataset's bytes, the config and the
settings, so preparing the same audit again finds the same files and the folds' runs as they were.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import data
from .config import MAX_STEPS, Config, ConfigError
from .config import load as load_config
from .fsutil import atomic_write_text
from .rundir import RunDir

PLAN = "plan.json"
DATA_DIR = "data"
DEFAULT_FOLDS = 2
# Fold runs are short: the score needs an adapter that has moved towards the other folds' labels, not a
# finished model. 60 steps of the demo preset (batch 4) see 240 examples, about one epoch of a fold of the
# 250-example measurement set; on this project's shared 2-core CPU the two folds' reference passes and the
# scoring (forward passes over every example, with and without the adapter) take most of an audit's time.
# A config with fewer train.iters keeps its own.
DEFAULT_ITERS = 60
VERSION = 1


class AuditError(Exception):
    """An audit that cannot be made as asked; the message (one line) says why."""


@dataclass(frozen=True)
class Plan:
    """What an audit scores and how (plan.json). `examples` holds [line, label, fold] per example, folds 1..K."""

    source: str  # the config file or run directory it was asked for
    dataset: str  # the dataset file (absolute), as the config names it
    sha256: str  # of the dataset's bytes when the plan was made
    format: str  # the format detected in the dataset (the fold files are read as that)
    tools: str  # the dataset's file-level tool schemas (absolute), or ""
    folds: int
    seed: int
    iters: int
    beta: float
    model: str  # the config's model.path
    config: dict[str, Any]  # the folds' run config (fold_config), but for data.path (each fold's own file)
    examples: list[list[Any]]
    version: int = VERSION

    @property
    def key(self) -> str:
        """What decides every file of the audit (everything but where it was asked from)."""
        fields = {k: v for k, v in asdict(self).items() if k != "source"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def fold_lines(self, fold: int) -> list[int]:
        """The dataset lines fold `fold` scores (its held-out examples), in file order."""
        return [line for line, _, f in self.examples if f == fold]


def fold_dir(audit_dir: Path, fold: int) -> Path:
    return audit_dir / f"fold-{fold}"


def fold_file(audit_dir: Path, fold: int, part: str) -> Path:
    """AUDIT_DIR/data/fold-N.PART.jsonl, PART "train" or "heldout"."""
    return audit_dir / DATA_DIR / f"fold-{fold}.{part}.jsonl"


def read_plan(audit_dir: Path) -> Plan:
    """The plan in AUDIT_DIR/plan.json; AuditError if there is none or it does not read as one."""
    path = audit_dir / PLAN
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Plan(**raw)
    except FileNotFoundError:
        raise AuditError(f"{audit_dir} is not an audit directory (no {PLAN})") from None
    except (OSError, ValueError, TypeError) as e:
        raise AuditError(f"{path}: not an audit plan ({e})") from None


# --- what is audited -------------------------------------------------------------------------


def source_config(source: Path) -> tuple[Config, Path]:
    """The config of a CONFIG file or of a RUN_DIR (its frozen config.toml), and that file's path."""
    if source.is_dir():
        if not RunDir(source).is_run():
            raise AuditError(f"{source}: neither a config file nor a run directory (no config.toml)")
        path = RunDir(source).config
    elif source.exists():
        path = source
    else:
        raise AuditError(f"{source}: no such config file or run directory")
    try:
        cfg, _ = load_config(path)
    except ConfigError as e:
        first = e.problems[0] if e.problems else "cannot be read"
        more = f" (and {len(e.problems) - 1} more; `tunedeck config check {path}` lists them)" if len(e.problems) > 1 else ""
        raise AuditError(f"{path}: {first}{more}") from None
    from .run_prep import frozen

    return frozen(cfg, path), path


def load_dataset(cfg: Config) -> data.Dataset:
    """The config's dataset, checked for what an audit needs: no errors, both labels (at least 2 of each)."""
    path = Path(cfg.data.path)
    try:
        ds = data.load(path, None if cfg.data.format == "auto" else cfg.data.format, strict=cfg.data.strict,
                       tools=cfg.data.tools or None)
    except data.DataError as e:
        errors = [p for p in e.problems if p.severity == "error"] or e.problems
        more = f"; {len(errors)} errors, `tunedeck data check {path}` lists them" if len(errors) > 1 else ""
        raise AuditError(f"data.path {errors[0]}{more}") from None
    nd, nu = ds.desirable, ds.undesirable
    if nd < 2 or nu < 2:
        raise AuditError(f"{path}: the audit trains KTO on desirable and undesirable examples and needs at least 2 "
                         f"of each; the dataset has {nd} desirable and {nu} undesirable"
                         + (" (SFT data with one label has no labels to audit)" if not nd or not nu else ""))
    return ds


def assign_folds(labels: list[bool], folds: int, seed: int) -> list[int]:
    """Each example's fold (1..folds), stratified by label: each class is shuffled (seeded) and dealt out in
    turn, the undesirable class continuing where the desirable one stopped, so fold sizes differ by at most 1."""
    out = [0] * len(labels)
    offset = 0
    for label in (True, False):
        idx = [i for i, lab in enumerate(labels) if lab is label]
        random.Random(f"audit:{seed}:{label}").shuffle(idx)
        for j, i in enumerate(idx):
            out[i] = (offset + j) % folds + 1
        offset += len(idx)
    return out


def make_plan(source: Path, cfg: Config, ds: data.Dataset, folds: int, iters: int | None) -> Plan:
    """The plan for auditing `ds` (the dataset of `cfg`) with `folds` folds of `iters` steps each."""
    n = len(ds.examples)
    if folds < 2:
        raise AuditError(f"folds must be at least 2 (got {folds}): each example is scored by a fold that did not "
                         "train on it")
    if folds > n:
        raise AuditError(f"folds = {folds} is more than the dataset's {n} examples ({cfg.data.path})")
    if iters is not None and not 1 <= iters <= MAX_STEPS:
        raise AuditError(f"iters must be 1 to {MAX_STEPS:,} (got {iters})")
    steps = iters or (min(cfg.train.iters, DEFAULT_ITERS) if cfg.train.epochs == 0 else DEFAULT_ITERS)
    labels = [e.label for e in ds.examples]
    assigned = assign_folds(labels, folds, cfg.train.seed)
    tools = str(Path(ds.tools_source).resolve()) if ds.tools_source else ""
    runs_config = fold_config(cfg, steps, ds.format, tools).to_dict()
    return Plan(str(source), str(Path(cfg.data.path).resolve()), ds.sha256, ds.format, tools, folds, cfg.train.seed,
                steps, cfg.kto.beta, cfg.model.path, runs_config,
                [[e.line, e.label, f] for e, f in zip(ds.examples, assigned)])


def fold_config(cfg: Config, iters: int, fmt: str, tools: str, train_file: Path | None = None) -> Config:
    """A fold's run config: the user's, training KTO for `iters` steps on `train_file` (data.path "" without
    it), read as format `fmt` with the file-level `tools`, every example in training (no validation split: the
    held-out fold is scored afterwards), from a fresh adapter, so that the reference π_ref is the base model."""
    c = copy.deepcopy(cfg)
    c.model.adapter = ""
    c.data.path, c.data.format, c.data.tools = str(train_file) if train_file else "", fmt, tools
    c.data.valid_fraction, c.data.strict = 0.0, True
    c.train.method, c.train.iters, c.train.epochs = "kto", iters, 0.0
    c.train.warmup_steps = min(c.train.warmup_steps, iters // 10)
    # a killed fold resumes from a checkpoint at most a quarter of its steps back
    c.train.save_every = min(c.train.save_every, max(1, iters // 4))
    return c


# --- writing it ------------------------------------------------------------------------------


def check_plan(audit_dir: Path, plan: Plan) -> bool:
    """Whether `audit_dir` already holds `plan` (False: it holds none); AuditError if it holds another."""
    if not (audit_dir / PLAN).exists():
        return False
    old = read_plan(audit_dir)
    if old.key != plan.key:
        raise AuditError(f"{audit_dir} holds an audit of other data or settings (made for {old.source}, "
                         f"{old.folds} folds, {old.iters} steps); remove it or choose another audit directory")
    return True


def write_plan(audit_dir: Path, plan: Plan, ds: data.Dataset, cfg: Config) -> None:
    """Write plan.json, the folds' data files and their prepared run directories (those already there, from an
    earlier start of the same plan, are kept as they are). AuditError if the directory holds another plan."""
    audit_dir.mkdir(parents=True, exist_ok=True)
    if not check_plan(audit_dir, plan):
        atomic_write_text(audit_dir / PLAN, json.dumps(asdict(plan), indent=1) + "\n")
    raw = {e.line: e.raw for e in ds.examples}
    for fold in range(1, plan.folds + 1):
        held = set(plan.fold_lines(fold))
        for part, lines in (("train", [ln for ln, _, _ in plan.examples if ln not in held]),
                            ("heldout", sorted(held))):
            path = fold_file(audit_dir, fold, part)
            path.parent.mkdir(exist_ok=True)
            atomic_write_text(path, "".join(raw[ln] + "\n" for ln in lines))
        train_file = fold_file(audit_dir, fold, "train")
        _prepare_fold(audit_dir, fold, fold_config(cfg, plan.iters, plan.format, plan.tools, train_file))


def _prepare_fold(audit_dir: Path, fold: int, cfg: Config) -> None:
    """Fold `fold`'s run directory with its frozen config, unless an earlier start of this plan made it."""
    from .run_prep import prepare_run  # the model loader (MLX), only once an audit is really being made
    from .runlock import RunError

    run_dir = fold_dir(audit_dir, fold)
    if RunDir(run_dir).holds_run():
        return
    try:
        prepare_run(cfg, None, audit_dir, run_dir)
    except RunError as e:
        if not RunDir(run_dir).holds_run():  # another start of the same audit prepared it first: keep it
            raise AuditError(str(e)) from None
