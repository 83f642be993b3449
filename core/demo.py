"""The offline demo model: a tiny Mistral-architecture model with a BPE tokenizer trained on the sample data.

`mlx_lm.load(dir)` loads it like any Hugging Face checkpoint (`model_type: "mistral"` maps to
mlx-lm's llama implementation). Weights are random but deterministic for a seed; it exists so that
tests, the demo and benchmarks exercise the real code paths without a model hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .fsutil import atomic_dir

SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
]

# Architectures, all Mistral-shaped (GQA, SwiGLU, RoPE). "7b" is Mistral-7B-v0.3's public config.
SIZES: dict[str, dict[str, Any]] = {
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


def default_dir() -> Path:
    """The user cache location of the demo model (`$XDG_CACHE_HOME/tunedeck/demo-model`)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tunedeck" / "demo-model"


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


def build_weights(dest: Path, size: str, vocab_size: int, seed: int) -> None:
    """Random, seeded weights for a SIZES architecture, saved as safetensors with config.json.

    The 7b shape is stored in bfloat16 (14.5 GB), the small ones in float32.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    cfg = model_config(size, vocab_size)
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    if size == "7b":
        model.set_dtype(mx.bfloat16)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def build(
    dest: str | os.PathLike[str],
    size: str = "tiny",
    seed: int = 0,
    tokenizer: str = "demo",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build the demo model into `dest` (atomically; `dest` must not exist). Returns `dest`.

    tokenizer: "demo" (BPE, ~2,000 ids, trained on the sample data) or "mistral-v3" (Mistral's own
    v3 SentencePiece tokenizer, 32,768 ids, from the mistral-common package).
    """
    dest = Path(dest)
    say = progress or (lambda _msg: None)
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
        build_weights(tmp, size, vocab if size != "7b" else max(vocab, 32768), seed)
    say(f"demo model ready at {dest}")
    return dest


def ensure(progress: Callable[[str], None] | None = None) -> Path:
    """The default demo model, built on first use into the user cache."""
    dest = default_dir()
    if not (dest / "config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            build(dest, progress=progress)
        except FileExistsError:
            pass  # built concurrently by another process
        except OSError as e:
            if not (dest / "config.json").is_file():
                raise RuntimeError(f"could not build the demo model in {dest}: {e}") from e
    return dest
