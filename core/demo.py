"""The offline demo model: a small Mistral-architecture model with a BPE tokenizer trained on the sample data.

`mlx_lm.load(dir)` loads it like any Hugging Face checkpoint (`model_type: "mistral"` maps to
mlx-lm's llama implementation). "demo" (`model.path = "demo"`, the app, `tunedeck demo-model`) means
the pre-trained one: the `nano` shape (0.9M parameters) trained from scratch for about two minutes on a 2-core CPU
as a causal LM on every bundled conversation, desirable and undesirable alike, so that the base model
already writes the data's tool calls most of the time and also imitates its mistakes. With
TUNEDECK_DEMO_PRETRAINED=0 (the test suite) "demo" means the random-weight `tiny` shape, built in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .fsutil import atomic_dir, sha256_file
from .progress import fmt_duration, write_soft

Progress = Callable[[str], None]
PRETRAINED_ENV = "TUNEDECK_DEMO_PRETRAINED"  # "0": "demo" means the random-weight model (seconds, for tests)
DEMO_SIZE = "nano"  # the pre-trained shape: RECIPE is tuned and timed for it (tiny is ~2.6x slower a token)
RANDOM_SIZE = "tiny"  # the random-weight model's default shape
BAR_WIDTH = 24

SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
]

# Architectures, all Mistral-shaped (GQA, SwiGLU, RoPE). "7b" is Mistral-7B-v0.3's public config.
SIZES: dict[str, dict[str, Any]] = {
    "nano": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=768),
    "small": dict(hidden_size=640, num_hidden_layers=10, num_attention_heads=10, num_key_value_heads=2,
                  intermediate_size=1792),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=32768),
}


def model_config(size: str = "tiny", vocab_size: int = 2000) -> dict[str, Any]:
    """A Hugging Face style config.json for one of SIZES."""
    cfg = {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "head_dim": SIZES[size]["hidden_size"] // SIZES[size]["num_attention_heads"],
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    cfg.update(SIZES[size])
    return cfg


@dataclass(frozen=True)
class Recipe:
    """How the demo model is pre-trained (recorded, with the final loss, seconds and load average, in its
    pretraining.json). Tuned on this project's 2-core CPU for well-formed greedy tool calls of the base
    model on held-out prompts within about two minutes (README, "The two commands")."""

    steps: int = 320  # 2.6 passes over the 1,000 conversations at batch 8
    batch_size: int = 8
    max_seq_len: int = 256  # longer conversations lose prompt tokens from the left (p95 is 294 tokens)
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    beta2: float = 0.95  # bias-corrected AdamW; MLX's default (0.999, uncorrected): 15 of 30 calls, not 24
    max_grad_norm: float = 1.0


RECIPE = Recipe()
RECIPE_VERSION = 2  # bump when the pre-training code changes its result
PAD_MULTIPLE = 32  # batch lengths are padded to a multiple of this (few distinct shapes)


def random_by_default() -> bool:
    """True when `TUNEDECK_DEMO_PRETRAINED=0`: "demo" then resolves to the random-weight model."""
    return os.environ.get(PRETRAINED_ENV, "") == "0"


def default_size(random: bool | None = None) -> str:
    """The shape of the demo model: DEMO_SIZE pre-trained, RANDOM_SIZE with random weights
    (`random=None` follows TUNEDECK_DEMO_PRETRAINED)."""
    return RANDOM_SIZE if (random_by_default() if random is None else random) else DEMO_SIZE


def check_pretrainable(size: str, tokenizer: str) -> None:
    """RECIPE is tuned and timed for DEMO_SIZE with the demo tokenizer: refuse anything else (ValueError)."""
    if (size, tokenizer) != (DEMO_SIZE, "demo"):
        raise ValueError(f"only the {DEMO_SIZE} shape with the demo tokenizer is pre-trained (got {size}, "
                         f"{tokenizer}); build random {size} weights instead (--random)")


def cache_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tunedeck"


def cache_key(size: str, seed: int, tokenizer: str, recipe: Recipe | None) -> str:
    """A digest of everything that changes a build: the recipe (None = random weights) and its code
    version, the architecture, seed, tokenizer, the bundled data (the tokenizer's and the pre-training
    corpus) and MLX's version."""
    import mlx.core as mx

    data = {p.name: sha256_file(p) for p in sorted(sample_data_dir().glob("*.jsonl"))}
    what = {"version": RECIPE_VERSION, "recipe": asdict(recipe) if recipe else None, "size": size,
            "seed": seed, "tokenizer": tokenizer, "data": data, "mlx": mx.__version__}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def default_dir(random: bool | None = None, size: str | None = None, seed: int = 0, tokenizer: str = "demo") -> Path:
    """Where a demo model lives in the user cache (`$XDG_CACHE_HOME/tunedeck/`): the pre-trained one
    in `demo-model-pretrained-<cache_key>`, the random one in `demo-model` (other sizes, seeds or
    tokenizers: `demo-model-random-<cache_key>`). `random=None` follows TUNEDECK_DEMO_PRETRAINED;
    `size=None` is `default_size(random)`."""
    if random is None:
        random = random_by_default()
    size = size or default_size(random)
    if random and (size, seed, tokenizer) == (RANDOM_SIZE, 0, "demo"):
        return cache_root() / "demo-model"
    kind = "random" if random else "pretrained"
    return cache_root() / f"demo-model-{kind}-{cache_key(size, seed, tokenizer, None if random else RECIPE)}"


def sample_data_dir() -> Path:
    """The bundled sample data, in a wheel (tunedeck/sample_data) or an editable checkout."""
    import tunedeck

    return Path(list(tunedeck.__path__)[0]) / "sample_data"


def sample_dataset() -> Path:
    return sample_data_dir() / "notes_tool_use.jsonl"


def _corpus() -> Iterator[str]:
    """Every message text of the bundled dataset (the tokenizer's training text)."""
    for path in sorted(sample_data_dir().glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                for msg in record.get("conversations", []):
                    if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                        yield msg["content"]


def build_tokenizer(dest: Path, vocab_size: int = 2000) -> int:
    """Train a byte-level BPE on the sample data and save it with a Mistral-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .template import MISTRAL_V3_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = MISTRAL_V3_CHAT_TEMPLATE
    fast.save_pretrained(str(dest))
    return tok.get_vocab_size()


def init_model(size: str, vocab_size: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """Random, seeded weights for a SIZES architecture (mlx-lm's llama module) and its config.json."""
    import mlx.core as mx
    from mlx_lm.models import llama

    cfg = model_config(size, vocab_size)
    mx.random.seed(seed)
    return llama.Model(llama.ModelArgs.from_dict(cfg)), cfg


def save_weights(dest: Path, model: Any, cfg: dict[str, Any]) -> None:
    """model.safetensors + config.json; the 7b shape is stored in bfloat16 (14.5 GB), the others in float32."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if cfg["hidden_size"] == SIZES["7b"]["hidden_size"]:
        model.set_dtype(mx.bfloat16)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


# --- pre-training ----------------------------------------------------------------------------


Corpus = list[tuple[np.ndarray, np.ndarray]]  # per conversation: token ids, and 1 where a token is trained


def corpus(tokenizer: Any, max_seq_len: int) -> Corpus:
    """Every bundled conversation, desirable and undesirable, rendered with the chat template as token
    ids, with its trained tokens: every assistant turn (tool calls and answers) and its end of turn.
    Longer conversations lose prompt tokens from the left."""
    from . import data
    from .template import encode_example

    out: Corpus = []
    for ex in data.load(sample_dataset()).examples:
        enc = encode_example(tokenizer, ex, max_seq_len, train_on="all_assistant")
        out.append((np.array(enc.ids, dtype=np.int32), np.array(enc.trained, dtype=np.float32)))
    return out


def batch_plan(lengths: np.ndarray, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """Each step's sequence indices: groups of `batch_size` neighbours in length order (little
    padding), every group once per epoch, in an order drawn from (seed, epoch)."""
    order = np.argsort(lengths, kind="stable")
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    plan: list[np.ndarray] = []
    epoch = 0
    while len(plan) < steps:
        plan += [groups[i] for i in np.random.default_rng([seed, epoch]).permutation(len(groups))]
        epoch += 1
    return plan[:steps]


def pad_batch(seqs: Corpus, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, T+1], flat target positions) with T a multiple of PAD_MULTIPLE: inputs ids[:, :-1],
    targets ids[:, 1:], and the indices into the flattened [B*T] targets of the trained tokens."""
    longest = max(len(seqs[i][0]) for i in idx) - 1
    t = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = np.zeros((len(idx), t + 1), dtype=np.int32)
    trained = np.zeros((len(idx), t), dtype=bool)
    for row, i in enumerate(idx):
        tokens, mask = seqs[i]
        ids[row, : len(tokens)] = tokens
        trained[row, : len(tokens) - 1] = mask[1:] > 0
    return ids, np.flatnonzero(trained).astype(np.int32)


def _bar(step: int, total: int, loss: float, eta: float | None) -> str:
    done = "#" * int(BAR_WIDTH * step / max(total, 1))
    return f"[{done:<{BAR_WIDTH}}] pre-training step {step}/{total} loss {loss:.3f} ETA {fmt_duration(eta)}"


def _optimizer(recipe: Recipe) -> Any:
    """AdamW (bias-corrected, as torch's) with linear warmup, then cosine decay to min_lr_ratio."""
    import mlx.optimizers as optim

    lr, warm = recipe.learning_rate, max(min(recipe.warmup_steps, recipe.steps - 1), 1)
    schedule = optim.join_schedules(
        [optim.linear_schedule(lr / warm, lr, warm),
         optim.cosine_decay(lr, max(recipe.steps - warm, 1), lr * recipe.min_lr_ratio)], [warm])
    return optim.AdamW(learning_rate=schedule, betas=[0.9, recipe.beta2], weight_decay=0.0, bias_correction=True)


def pretrain(model: Any, seqs: Corpus, recipe: Recipe, seed: int, say: Progress) -> float:
    """Train every weight of `model` as a causal LM on `seqs`: next-token cross-entropy on the trained
    tokens, the vocabulary projection computed at those positions only (half the tokens, half the cost).
    Returns the mean loss of the last 1/40 of the steps."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    opt = _optimizer(recipe)

    def loss_fn(m: Any, x: Any, y: Any, pos: Any) -> Any:
        hidden = m.model(x)
        hidden = hidden.reshape(-1, hidden.shape[-1])[pos]
        return nn.losses.cross_entropy(m.lm_head(hidden), y.reshape(-1)[pos]).mean()

    value_and_grad = nn.value_and_grad(model, loss_fn)
    plan = batch_plan(np.array([len(s[0]) for s in seqs]), recipe.batch_size, recipe.steps, seed)
    every = max(1, recipe.steps // 40)
    t0, losses = time.perf_counter(), []
    for n, idx in enumerate(plan, 1):
        ids, pos = (mx.array(a) for a in pad_batch(seqs, idx))
        loss, grads = value_and_grad(model, ids[:, :-1], ids[:, 1:], pos)
        grads, _ = optim.clip_grad_norm(grads, recipe.max_grad_norm)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"demo model pre-training diverged at step {n} (loss {losses[-1]})")
        if n % every == 0 or n == recipe.steps:
            elapsed = time.perf_counter() - t0
            say(_bar(n, recipe.steps, float(np.mean(losses[-every:])), elapsed / n * (recipe.steps - n)))
    return float(np.mean(losses[-every:]))


class StderrProgress:
    """Build messages one per line on stderr; pre-training updates redrawn in place on a terminal.

    The stream is looked up at each write (the app captures stderr while it runs); a stream that has
    gone away is silenced (`core.progress.write_soft`)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out, self.open, self.live = out, False, True

    def __call__(self, message: str) -> None:
        out = self.out or sys.stderr
        try:
            tty = out.isatty()
        except (OSError, ValueError):
            tty = False
        if tty and message.startswith("["):
            text, self.open = "\r" + message + "\x1b[K", True
        else:
            text, self.open = ("\n" if self.open else "") + message + "\n", False
        if self.live:
            self.live = write_soft(out, text)


# --- building --------------------------------------------------------------------------------


def build(
    dest: str | os.PathLike[str],
    size: str | None = None,
    seed: int = 0,
    tokenizer: str = "demo",
    progress: Progress | None = None,
    steps: int = 0,
) -> Path:
    """Build a demo model into `dest` (atomically; `dest` must not exist). Returns `dest`.

    tokenizer: "demo" (BPE, ~2,000 ids, trained on the sample data) or "mistral-v3" (Mistral's own
    v3 SentencePiece tokenizer, 32,768 ids, from the mistral-common package). steps: pre-training
    steps of RECIPE on the bundled conversations (0 = the random, seeded initial weights; only
    DEMO_SIZE with the demo tokenizer is pre-trained). size: default `default_size(random=not steps)`.
    Deterministic for (size, seed, tokenizer, steps) on one machine and MLX version.
    """
    dest = Path(dest)
    say = progress or (lambda _msg: None)
    size = size or default_size(random=not steps)
    if steps:
        check_pretrainable(size, tokenizer)
    with atomic_dir(dest) as tmp:
        if tokenizer == "mistral-v3":
            from .template import write_mistral_v3_tokenizer

            say("writing Mistral v3 tokenizer")
            write_mistral_v3_tokenizer(tmp)
            vocab = 32768
        elif tokenizer == "demo":
            say("training tokenizer on the sample data")
            vocab = build_tokenizer(tmp)
        else:
            raise ValueError(f"unknown tokenizer {tokenizer!r}; expected 'demo' or 'mistral-v3'")
        say(f"initialising {size} weights (seed {seed})")
        model, cfg = init_model(size, vocab if size != "7b" else max(vocab, 32768), seed)
        if steps:
            _pretrain_into(tmp, model, replace(RECIPE, steps=steps), seed, say)
        save_weights(tmp, model, cfg)
    say(f"demo model ready at {dest}")
    return dest


def _pretrain_into(tmp: Path, model: Any, recipe: Recipe, seed: int, say: Progress) -> None:
    """Pre-train `model` with the tokenizer saved in `tmp`; record the recipe in tmp/pretraining.json."""
    from mlx_lm.utils import load_tokenizer

    seqs = corpus(load_tokenizer(tmp), recipe.max_seq_len)
    tokens = sum(len(ids) for ids, _ in seqs)
    trained = int(sum(mask.sum() for _, mask in seqs))
    say(f"pre-training on {len(seqs)} bundled conversations ({tokens:,} tokens, {trained:,} of them in "
        f"assistant turns), {recipe.steps} steps of {recipe.batch_size}")
    t0, cpu0 = time.perf_counter(), time.process_time()
    loss = pretrain(model, seqs, recipe, seed, say)
    record = {"recipe": asdict(recipe), "seed": seed, "conversations": len(seqs), "tokens": tokens,
              "trained_tokens": trained, "final_loss": round(loss, 4),
              "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1),
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    (tmp / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _build_lock(dest: Path, say: Progress) -> Iterator[None]:
    """Serialise builds of `dest` across processes (a second one waits, then finds it built)."""
    import fcntl

    with open(dest.with_name(dest.name + ".lock"), "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is building {dest}")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure(progress: Progress | None = None, random: bool | None = None) -> Path:
    """The demo model ("demo"), built on first use into the user cache: DEMO_SIZE pre-trained with
    RECIPE, or with `random` (`None`: TUNEDECK_DEMO_PRETRAINED=0) the random-weight RANDOM_SIZE model.
    Progress goes to `progress`, else to stderr."""
    random = random_by_default() if random is None else random
    dest = default_dir(random)
    if (dest / "config.json").is_file():
        return dest
    say = progress or StderrProgress()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(dest, say):
            if not (dest / "config.json").is_file():
                build(dest, progress=say, steps=0 if random else RECIPE.steps)
    except OSError as e:
        if not (dest / "config.json").is_file():
            raise RuntimeError(f"could not build the demo model in {dest}: {e}") from e
    return dest
