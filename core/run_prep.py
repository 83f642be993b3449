"""Before a run: the checks the CLI and the app make before anything is started (`preflight`), the run
directory with its frozen config (`prepare_run`), and on resume what changed since the run began."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import data, runlock, runs
from .config import DEMO_MODEL, Config, beside, save
from .model import ModelError, check_remote_code, resolve_path
from .objectives import for_config


class InputError(Exception):
    """The data or model cannot be trained on as configured; the message says why (no traceback)."""


def frozen(cfg: Config, config_path: Path | None) -> Config:
    """A copy of `cfg` whose data.path, model.adapter and (when it exists there) a relative model.path are
    absolute, taken from the config file's directory (else the working directory). `cfg` is left as it is."""
    base = config_path.parent if config_path else Path.cwd()
    data_path = beside(cfg.data.path, base).resolve()
    model = cfg.model
    if model.adapter and not Path(model.adapter).is_absolute():
        model = replace(model, adapter=str((base / model.adapter).resolve()))
    model_path = Path(model.path).expanduser()
    if model.path != DEMO_MODEL and not model_path.is_absolute() and (base / model_path).exists():
        model = replace(model, path=str((base / model_path).resolve()))
    return replace(cfg, data=replace(cfg.data, path=str(data_path)), model=model)


def prepare_run(cfg: Config, config_path: Path | None, runs_root: Path, run_dir: Path | None = None) -> Path:
    """A new run directory holding the frozen config (`frozen`); `cfg` is not changed. The directory is locked
    before anything is written into it: a live trainer's, or one already holding a run, is refused unchanged."""
    cfg = frozen(cfg, config_path)
    if run_dir is None:
        run_dir = runs.new_run_dir(runs_root, cfg.train.method)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    runs.check_writable(run_dir)
    lock = runlock.RunLock(run_dir)
    lock.acquire()  # a concurrent `train --run-dir` on the same directory waits here, then finds our config
    try:
        if runs.holds_run(run_dir):
            raise runs.RunError(f"{run_dir} already holds a run; use --resume to continue it")
        save(cfg, run_dir / "config.toml")
    finally:
        lock.release()
    return run_dir


def changed_inputs(run_dir: Path, cfg: Config, inputs: dict[str, Any]) -> list[str]:
    """On resume: a warning for each of the dataset (`data_sha256`) and the base model's weight files
    (`model_files`) that differ from the run's first start."""
    first = next((e for e in runs.read_events(run_dir) if e.get("type") == "start"), None)
    if first is None:
        return []
    changed = []
    if first.get("data_sha256") not in (None, inputs["data_sha256"]):
        changed.append(f"the dataset {cfg.data.path} changed since this run started (sha256 "
                       f"{str(first['data_sha256'])[:12]}… → {inputs['data_sha256'][:12]}…): the split and the "
                       "batches follow the new file, so this resume is not exact")
    if first.get("model_files") not in (None, inputs["model_files"]):
        changed.append(f"the base model's weight files changed since this run started ({cfg.model.path}): the "
                       "checkpoints were trained on other weights")
    return changed


def trainable_problem(cfg: Config, train: list[data.Example]) -> str | None:
    """Why this training split (after SFT's filtering) cannot be trained on, or None."""
    path = cfg.data.path
    if cfg.train.method == "sft" and not train:
        return (f"{path}: SFT trains on desirable examples only, and the training split has none "
                "(every example is labelled false); label some true, or use train.method = \"kto\"")
    if not train:
        return f"{path}: the training split is empty"
    if cfg.train.method == "kto":
        nd = sum(1 for e in train if e.label)
        if nd == 0 or nd == len(train):
            return (f"{path}: KTO needs both desirable and undesirable examples; the training split has {nd} "
                    f"desirable and {len(train) - nd} undesirable"
                    + (" (for desirable-only data use train.method = \"sft\")" if nd else ""))
    return None


def split_examples(cfg: Config, data_path: Path | str,
                   warn: Callable[[str], None] | None = None) -> tuple[list[data.Example], list[data.Example], str]:
    """The dataset's training and validation examples that train.method uses (core.objectives), and its
    sha256; `warn` hears about lines set aside and the data. DataError lists every bad line; InputError when
    the training split cannot be trained on."""
    ds = data.load(data_path, None if cfg.data.format == "auto" else cfg.data.format, strict=cfg.data.strict,
                   tools=cfg.data.tools or None)
    warn = warn or (lambda message: None)
    if ds.skipped:
        warn(f"{ds.skipped} bad line(s) in {cfg.data.path} set aside (data.strict = false)")
    train, valid, warnings = for_config(cfg).select(*data.split(ds.examples, cfg.data.valid_fraction, cfg.train.seed))
    for message in warnings:
        warn(message)
    if msg := trainable_problem(cfg, train):
        raise InputError(msg)
    return train, valid, ds.sha256


def preflight(cfg: Config, base: Path | None = None) -> None:
    """Checks that need no model weights, for the CLI to run before it makes a run directory or spawns a
    trainer: the dataset (DataError listing every bad line), the training split (InputError), and a local
    model directory (ModelError: missing files, custom code). Relative paths are taken from `base`."""
    base = base or Path.cwd()
    data_path = Path(cfg.data.path).expanduser()
    split_examples(cfg, data_path if data_path.is_absolute() else base / data_path)
    if cfg.model.path == DEMO_MODEL:
        return
    model_path = Path(cfg.model.path).expanduser()
    if not model_path.is_absolute() and (base / model_path).exists():
        model_path = base / model_path
    local = resolve_path(str(model_path) if model_path.exists() else cfg.model.path)
    if Path(local).is_dir():
        check_remote_code(Path(local), cfg.model.trust_remote_code)
    else:
        from .hub import HubError, check_available

        try:
            check_available(local)
        except HubError as e:
            raise ModelError(f"model.path: {e}") from None
