"""Training configuration: typed sections, TOML load/save, validation with key-level errors.

Sections `[model] [data] [lora] [train] [kto]`. Defaults are the Mac-24GB preset: Mistral-7B-Instruct
-v0.3 in 4 bits, LoRA r16 on the attention projections, gradient checkpointing on. Validation reports
every problem at once, each naming the dotted key, the bad value and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .config_help import HELP
from .config_values import MAX_LAYERS, Underflow, coerce, cut, describe, lora_problems, range_problem
from .fsutil import NotRegularFile, atomic_write_text, open_regular
from .toml_errors import long_integer_error, syntax_error

DEFAULT_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
DEMO_MODEL = "demo"  # resolved by core.demo to the cached tiny model

# Defaults for LoRA with bias-corrected AdamW (train.optimizer = "adamw", torch's AdamW). TRL's defaults
# are for full fine-tuning (SFTConfig 2e-5, KTOConfig 1e-6); LoRA's low-rank, scaled updates take about 10x
# that. SFT: 1e-4, the usual LoRA rate. KTO: 10 x TRL's 1e-6 = 1e-5; its loss saturates (a sigmoid of a
# reward margin) and its gradients scale with beta, so at SFT rates the policy leaves the reference within
# a few dozen steps and rewards collapse. mlx-lm's default (1e-5 with uncorrected Adam) runs its first
# hundreds of steps 3-6.5x hotter than the same rate here: (1 - b1^t) / sqrt(1 - b2^t) is 3.2 at t = 1,
# 6.5 at t = 10, 3.2 at t = 100.
DEFAULT_LR = {"sft": 1e-4, "kto": 1e-5}
MIN_LR = 1e-12  # a learning rate is 0 (the method's default) or at least this

MAX_STEPS = 10_000_000  # optimizer steps and step intervals; step numbers stay exact in float32 (< 2**24)
MAX_SEED = 2**32 - 1  # the trainer seeds mx.random (uint64) with seed * 1_000_003 + micro-batch index


@dataclass
class ModelConfig:
    path: str = DEFAULT_MODEL  # local directory, Hugging Face id, or "demo"
    quantize: int = 4  # 0 = keep the checkpoint's precision; 4 or 8 = QLoRA
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    adapter: str = ""  # warm-start from this adapter directory
    trust_remote_code: bool = False
    quantized_matmul: str = "auto"  # auto | dequantize | kernel: quantized layers under grad_checkpoint, the head


@dataclass
class DataConfig:
    path: str = "data.jsonl"
    format: str = "auto"
    max_seq_len: int = 2048
    valid_fraction: float = 0.1
    strict: bool = True  # False: set bad lines aside (reported) instead of refusing the file
    string_format: str = "raw"  # raw | chat: plain-string prompt/completion records as TRL reads them, or templated
    train_on: str = "all_assistant"  # SFT: all_assistant | last
    tools: str = ""  # tool schemas (JSON list); relative to the dataset's directory; "" = tools.json beside it


@dataclass
class LoraConfig:
    type: str = "lora"  # lora | dora
    rank: int = 16
    scale: float = 2.0  # alpha / rank: alpha 32 at rank 16
    dropout: float = 0.05
    keys: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    num_layers: int = -1  # -1 = every layer


@dataclass
class TrainConfig:
    method: str = "kto"  # sft | kto
    iters: int = 600
    epochs: float = 0.0  # > 0 overrides iters: epochs over the training split
    batch_size: int = 4
    grad_accumulation: int = 1
    learning_rate: float = 0.0  # 0 = the method's default (DEFAULT_LR)
    lr_schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw (bias-corrected, torch's) | adamw_mlx (mlx-lm's, uncorrected)
    max_grad_norm: float = 1.0  # 0 = no clipping
    grad_checkpoint: bool = True
    compile: str = "auto"  # auto | on | off: mx.compile the step or each layer; auto: the update, on GPUs
    lean_backward: str = "auto"  # auto | on | off: backwards keeping less (core.lean_backward); auto: GPUs, no grad_checkpoint
    save_every: int = 100
    keep_checkpoints: int = 3  # 0 = keep all
    eval_every: int = 100
    eval_batches: int = 16  # 0 = the whole validation split
    report_every: int = 1
    sample_every: int = 50  # 0 = off: greedy answers to held-out prompts every N steps
    sample_prompts: int = 2
    sample_tokens: int = 64
    seed: int = 0


@dataclass
class KtoConfig:
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    loss_type: str = "kto"  # kto | apo_zero_unpaired
    kl_pairs: str = "batch"  # batch (TRL's rotation in each micro-batch) | dataset (a fixed derangement over the split)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kto: KtoConfig = field(default_factory=KtoConfig)

    @property
    def learning_rate(self) -> float:
        """The learning rate in effect: the configured one, or the method's default."""
        return self.train.learning_rate or DEFAULT_LR.get(self.train.method, 1e-5)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}  # type: ignore[misc]
_SECTION_TYPES = typing.get_type_hints(Config)

CHOICES: dict[str, tuple[Any, ...]] = {
    "model.quantize": (0, 4, 8),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.quantized_matmul": ("auto", "dequantize", "kernel"),
    "data.format": ("auto", "kto", "messages", "trl_unpaired", "sharegpt", "prompt_completion", "text"),
    "data.train_on": ("all_assistant", "last"),
    "lora.type": ("lora", "dora"),
    "train.method": ("sft", "kto"),
    "data.string_format": ("raw", "chat"),
    "train.lr_schedule": ("cosine", "linear", "constant"),
    "train.optimizer": ("adamw", "adamw_mlx"),
    "train.compile": ("auto", "on", "off"),
    "train.lean_backward": ("auto", "on", "off"),
    "kto.loss_type": ("kto", "apo_zero_unpaired"),
    "kto.kl_pairs": ("batch", "dataset"),
}

# (minimum, maximum, minimum inclusive?) for numeric keys
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "data.max_seq_len": (8, 131072, True),
    "data.valid_fraction": (0.0, 0.9, True),
    "lora.rank": (1, 1024, True),
    "lora.scale": (0.0, None, False),
    "lora.dropout": (0.0, 0.9, True),
    "lora.num_layers": (-1, MAX_LAYERS, True),
    "train.iters": (1, MAX_STEPS, True),
    "train.epochs": (0.0, 10_000.0, True),
    "train.batch_size": (1, 4096, True),
    "train.grad_accumulation": (1, 1024, True),
    "train.learning_rate": (0.0, 1.0, True),
    "train.warmup_steps": (0, MAX_STEPS, True),
    "train.min_lr_ratio": (0.0, 1.0, True),
    "train.weight_decay": (0.0, 1.0, True),
    "train.max_grad_norm": (0.0, None, True),
    "train.save_every": (1, MAX_STEPS, True),
    "train.keep_checkpoints": (0, None, True),
    "train.eval_every": (1, MAX_STEPS, True),
    "train.eval_batches": (0, MAX_STEPS, True),
    "train.report_every": (1, MAX_STEPS, True),
    "train.sample_every": (0, MAX_STEPS, True),
    "train.sample_prompts": (1, 16, True),
    "train.sample_tokens": (1, 4096, True),
    "train.seed": (0, MAX_SEED, True),
    "kto.beta": (0.0, None, False),
    "kto.desirable_weight": (0.0, None, False),
    "kto.undesirable_weight": (0.0, None, False),
}


@dataclass(frozen=True)
class ConfigProblem:
    key: str  # dotted path, e.g. "train.batch_size"; "" for the whole file
    message: str
    line: int | None = None
    column: int | None = None
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        where = self.key or "config"
        if self.line is not None:
            where += f" (line {self.line}, column {self.column})"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__("\n".join(head + str(p) for p in problems))


def beside(path: str, base: Path) -> Path:
    """A path from a config: `~` expanded, a relative one taken from `base` (the config file's directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def field_types() -> dict[str, Any]:
    """Map every dotted key ("train.iters") to its Python type."""
    out: dict[str, Any] = {}
    for section, cls in _SECTION_TYPES.items():
        for name, tp in typing.get_type_hints(cls).items():
            out[f"{section}.{name}"] = tp
    return out


FIELD_TYPES = field_types()


def parse_float(text: str) -> float:
    """tomllib's parse_float: float(text), marking a nonzero literal that underflows to 0.0."""
    value = float(text)
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):
        value = Underflow(value)
        value.literal = text
    return value


def from_dict(raw: dict[str, Any]) -> tuple[Config, list[ConfigProblem]]:
    """Build a Config from parsed TOML, collecting every problem (unknown keys, types, ranges, combos)."""
    cfg = Config()
    problems: list[ConfigProblem] = []
    for section, body in raw.items():
        if section not in _SECTION_TYPES:
            problems.append(ConfigProblem(section, f"unknown section; expected one of {', '.join(_SECTION_TYPES)}"))
            continue
        if not isinstance(body, dict):
            problems.append(ConfigProblem(section, f"expected a table [{section}], got {describe(body)}"))
            continue
        target = getattr(cfg, section)
        for name, value in body.items():
            key = f"{section}.{name}"
            if key not in FIELD_TYPES:
                known = ", ".join(f.name for f in dataclasses.fields(target))
                problems.append(ConfigProblem(key, f"unknown key; [{section}] accepts {known}"))
                continue
            coerced, err = coerce(key, on_off(key, value), FIELD_TYPES[key])
            if err:
                problems.append(ConfigProblem(key, err))
            else:
                setattr(target, name, coerced)
    problems += validate(cfg)
    return cfg, problems


def on_off(key: str, value: Any) -> Any:
    """A boolean for a key whose choices are "auto" | "on" | "off" reads as "on" / "off" (TOML's true/false;
    train.lean_backward was a boolean before it had "auto")."""
    if isinstance(value, bool) and {"on", "off"} <= set(CHOICES.get(key, ())):
        return "on" if value else "off"
    return value


def validate(cfg: Config) -> list[ConfigProblem]:
    """Range, choice and cross-field checks on a typed config (errors and warnings)."""
    problems: list[ConfigProblem] = []
    for key, choices in CHOICES.items():
        value = get_value(cfg, key)
        if value not in choices:
            opts = ", ".join(repr(c) for c in choices)
            problems.append(ConfigProblem(key, f"got {cut(value)}; expected one of {opts}"))
    for key, bounds in RANGES.items():
        if msg := range_problem(get_value(cfg, key), *bounds):
            problems.append(ConfigProblem(key, msg))
    problems += [ConfigProblem(key, msg) for key, msg in lora_problems(cfg.lora.num_layers, cfg.lora.keys)]
    lr = cfg.train.learning_rate
    if 0 < lr < MIN_LR:
        problems.append(ConfigProblem("train.learning_rate", f"got {lr:g}; expected 0 (the method's default) "
                                      f"or {MIN_LR:g} to 1"))
    if not cfg.model.path.strip():
        problems.append(ConfigProblem("model.path", "is empty; expected a local directory, a Hugging Face id or \"demo\""))
    if not cfg.data.path.strip():
        problems.append(ConfigProblem("data.path", "is empty; expected the path of a JSONL dataset"))
    return problems + _training_problems(cfg.train)


def _training_problems(train: TrainConfig) -> list[ConfigProblem]:
    """KTO's micro-batch and learning rate (an error below 2 examples, warnings where it is unreliable), a
    compiled step (a warning: slower on real data) and a warmup as long as the run (a warning)."""
    problems: list[ConfigProblem] = []
    if train.method == "kto":
        if train.batch_size < 2:
            problems.append(ConfigProblem("train.batch_size", f"got {train.batch_size}; KTO needs a micro-batch of "
                                          "at least 2 (the KL estimate pairs each prompt with another example's "
                                          "completion)"))
        elif train.batch_size < 4:
            problems.append(ConfigProblem("train.batch_size", f"got {train.batch_size}; KTO's KL estimate is noisy "
                                          "below 4 examples per micro-batch", severity="warning"))
        if train.learning_rate > 1e-4:
            problems.append(ConfigProblem("train.learning_rate", f"got {train.learning_rate:g}; KTO with LoRA usually "
                                          f"diverges above 1e-4 (default {DEFAULT_LR['kto']:g})", severity="warning"))
    if train.compile == "on":
        problems.append(ConfigProblem("train.compile", "is on: each new batch shape costs a trace and its kernels' "
                                      "compilation (tens of seconds a shape on an H200), and a dataset of varied "
                                      "lengths brings new shapes most steps; \"auto\" (off) is faster unless "
                                      "every batch has the same length", severity="warning"))
    if train.warmup_steps >= train.iters and train.epochs == 0:
        problems.append(ConfigProblem("train.warmup_steps", f"got {train.warmup_steps}; expected fewer than "
                                      f"train.iters ({train.iters})", severity="warning"))
    return problems


def errors(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    return [p for p in problems if p.severity == "error"]


def get_value(cfg: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def toml_loads(text: str) -> dict[str, Any]:
    """tomllib.loads, dropping a leading UTF-8 BOM and marking floats that underflow to 0 (Underflow).

    Raises TOMLDecodeError, RecursionError (nesting too deep) or ValueError (an integer longer than
    Python reads).
    """
    return tomllib.loads(text.removeprefix("\ufeff"), parse_float=parse_float)


def parse_toml(text: str) -> tuple[dict[str, Any] | None, list[ConfigProblem]]:
    """Parse TOML text; a syntax error becomes one problem with its line and column."""
    try:
        return toml_loads(text), []
    except tomllib.TOMLDecodeError as e:
        return None, [ConfigProblem("", *syntax_error(text, str(e)))]
    except RecursionError:
        return None, [ConfigProblem("", "invalid TOML: arrays or inline tables nested too deeply to parse")]
    except ValueError:
        return None, [ConfigProblem("", *long_integer_error(text))]


def loads(text: str) -> tuple[Config | None, list[ConfigProblem]]:
    """Parse and validate TOML text; the Config is None when the TOML itself is invalid."""
    raw, problems = parse_toml(text)
    if raw is None:
        return None, problems
    return from_dict(raw)


def load(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, list[ConfigProblem]]:
    """Load a config file, apply `--set` overrides; raise ConfigError on any error, return warnings."""
    path = Path(path)
    cfg, problems = loads(read_text(path))
    if cfg is not None and overrides:
        problems += apply_overrides(cfg, overrides)
        problems += validate(cfg)
        problems = list(dict.fromkeys(problems))
    if cfg is None or errors(problems):
        raise ConfigError(errors(problems), str(path))
    return cfg, problems


def read_text(path: Path) -> str:
    """A TOML file's text; ConfigError (naming the file) if it is missing, not a regular file (a FIFO is
    refused, never waited on), unreadable or not UTF-8."""
    def fail(msg: str) -> ConfigError:
        return ConfigError([ConfigProblem("", msg)], str(path))

    try:
        with os.fdopen(open_regular(os.path.realpath(path)), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise fail("file not found") from None
    except NotRegularFile:
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise fail(f"is {kind}; expected a TOML file") from None
    except OSError as e:
        raise fail(f"cannot read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise fail(f"cannot read: invalid UTF-8 at byte {e.start} (line {line}); expected UTF-8 text") from None


def parse_override(item: str) -> tuple[str, Any]:
    """Parse `key.path=value`: the value as TOML if it parses (numbers, booleans, arrays), else a string."""
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected key=value, e.g. train.iters=50")
    key, text = (s.strip() for s in item.split("=", 1))
    try:
        value = toml_loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # not TOML (TOMLDecodeError is a ValueError): taken as a string
        value = text
    return key, value


def apply_overrides(cfg: Config, items: list[str]) -> list[ConfigProblem]:
    """Apply `--set key=value` overrides in place, converting values to each key's type."""
    problems: list[ConfigProblem] = []
    for item in items:
        try:
            key, value = parse_override(item)
        except ValueError as e:
            problems.append(ConfigProblem("", str(e)))
            continue
        if key not in FIELD_TYPES:
            problems.append(ConfigProblem(key, "unknown key for --set; see `tunedeck config init` for the keys"))
            continue
        tp = FIELD_TYPES[key]
        if typing.get_origin(tp) is list and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif tp is str and not isinstance(value, str):
            value = on_off(key, value)
            value = str(value).lower() if isinstance(value, bool) else str(value)
        coerced, err = coerce(key, value, tp)
        if err:
            problems.append(ConfigProblem(key, f"--set {err}"))
            continue
        section, name = key.split(".", 1)
        setattr(getattr(cfg, section), name, coerced)
    return problems


def to_commented_toml(cfg: Config) -> str:
    """TOML with a comment above each key (for `config init`); parses back to the same config."""
    lines = ["# tunedeck training config. `tunedeck config check FILE` validates it.", ""]
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for name, value in values.items():
            lines.append(f"# {HELP[f'{section}.{name}']}")
            lines.append(tomli_w.dumps({name: value}).strip())
        lines.append("")
    return "\n".join(lines)


def save(cfg: Config, path: str | Path, comments: bool = False) -> None:
    """Write the config as TOML, atomically (with a comment per key if asked)."""
    atomic_write_text(path, to_commented_toml(cfg) if comments else cfg.to_toml())


PRESETS = ("mac-24gb", "demo")


def preset(name: str = "mac-24gb", data_path: str | None = None) -> Config:
    """A ready-to-edit config: `mac-24gb` (Mistral-7B 4-bit, KTO) or `demo` (tiny model, CPU-friendly)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    cfg = Config()
    if name == "demo":
        cfg.model.path = DEMO_MODEL
        cfg.model.quantize = 0
        cfg.data.max_seq_len = 512
        cfg.lora.rank = 8
        cfg.train.iters = 200
        cfg.train.warmup_steps = 10
        cfg.train.save_every = 50
        cfg.train.eval_every = 50
        cfg.train.eval_batches = 4
        cfg.train.learning_rate = 1e-4
        cfg.train.grad_checkpoint = False  # a 4M-parameter model needs no activation savings
    if data_path is not None:
        cfg.data.path = data_path
    return cfg
