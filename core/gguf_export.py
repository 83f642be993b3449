"""GGUF files that llama.cpp loads: written with the GGUF project's own writer (`gguf`), checked with llama.cpp.

Layout (what llama.cpp's ``convert_hf_to_gguf.py`` writes for Llama/Mistral checkpoints):

- architecture ``llama``; ``llama.*`` hyper-parameters from config.json (context and embedding length,
  blocks, feed-forward length, heads, KV heads, RoPE base and dimension, RMS-norm epsilon, vocabulary);
- tensors under llama.cpp's names (`gguf.TensorNameMap`); the Q and K projections are permuted from
  Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved one; 1-D tensors (norms) stay float32;
  matrices are float16 (``f16``), or ``q8_0`` (blocks of 32 int8 values with one float16 scale; a
  matrix whose rows do not split into blocks stays float16);
- the tokenizer as llama.cpp reads it. SentencePiece (a ``tokenizer.model``): ``tokenizer.ggml.model =
  "llama"`` with every piece's real score and type from the model file, added tokens as control or
  user-defined tokens, and ``add_space_prefix`` as the Hugging Face tokenizer behaves after a special
  token (llama.cpp prefixes a space to every text run after a special token when it is set; Hugging
  Face's ``prepend_scheme = "first"`` does not, so it is false there and chat prompts, which start with
  the BOS token, tokenize identically). Byte-level BPE: ``"gpt2"`` with the merges and the ``gpt-2``
  pre-tokenizer (the GPT-2 split regex that ``ByteLevel(use_regex=True)`` applies); other BPE
  pre-tokenizers are refused. Both: BOS/EOS/UNK/PAD ids, ``add_bos_token``/``add_eos_token`` as the
  tokenizer encodes plain text, and ``tokenizer.chat_template``.

Verification runs llama.cpp (llama-cpp-python) in a child process, so that a crash in llama.cpp
becomes an error message: the file must load, tokenize rendered conversations to the Hugging Face
tokenizer's ids, and give logits within `tolerance` of the fused MLX model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGUF_TYPES = ("f16", "q8_0")
VERIFIER_INSTALL = 'CMAKE_ARGS=-DGGML_NATIVE=OFF pip install "llama-cpp-python>=0.3.36"'
VERIFY_TIMEOUT = 900.0
SPM_SPACE = "\u2581"
# float16 unit roundoff (half an ulp of 1.0) and the largest rounding error of a q8_0 element relative
# to its block's largest magnitude (half a step of 127 levels)
F16_U = 2.0**-11
Q8_0_U = 0.5 / 127


class GGUFError(Exception):
    """A model that cannot be written as GGUF, or a GGUF that failed its check in llama.cpp."""


@dataclass
class Vocab:
    """The tokenizer as GGUF metadata."""

    model: str
    pre: str
    tokens: list[str | bytes]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    add_space_prefix: bool | None = None


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise GGUFError("GGUF export needs the 'gguf' package: pip install gguf") from None
    return gguf


def _hf(tokenizer: Any) -> Any:
    return getattr(tokenizer, "_tokenizer", tokenizer)


# --- tokenizer ---------------------------------------------------------------------------------


def _added(hf: Any) -> dict[int, tuple[str, bool]]:
    return {int(i): (t.content, bool(t.special)) for i, t in hf.added_tokens_decoder.items()}


def _space_after_special(hf: Any) -> bool:
    """True if the tokenizer starts a text run that follows a special token with a SentencePiece space."""
    if hf.bos_token is None:
        return True
    ids = hf(hf.bos_token + "a", add_special_tokens=False)["input_ids"]
    return len(ids) > 1 and hf.convert_ids_to_tokens(ids[1]).startswith(SPM_SPACE)


def _pad(vocab: Vocab, size: int, tokenizer_size: int) -> None:
    gguf = _gguf()
    if tokenizer_size > size:
        raise GGUFError(f"the tokenizer has {tokenizer_size} tokens but the model's vocab_size is {size}")
    for i in range(len(vocab.tokens), size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(gguf.TokenType.UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)


def spm_vocab(model_file: Path, hf: Any, size: int) -> Vocab:
    """SentencePiece pieces, scores and types from `model_file`, the tokenizer's added tokens on top."""
    gguf = _gguf()
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise GGUFError("GGUF export of a SentencePiece tokenizer needs 'sentencepiece': pip install sentencepiece"
                        ) from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(model_file))
    except (OSError, RuntimeError) as e:
        raise GGUFError(f"{model_file}: not a SentencePiece model: {e}") from None
    T = gguf.TokenType
    tokens: list[str | bytes] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(sp.vocab_size()):
        kind = (T.UNKNOWN if sp.IsUnknown(i) else T.CONTROL if sp.IsControl(i) else T.UNUSED if sp.IsUnused(i)
                else T.BYTE if sp.IsByte(i) else T.NORMAL)
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        types.append(kind)
        scores.append(float(sp.GetScore(i)))
    for i, (content, special) in sorted(_added(hf).items()):
        if i >= len(tokens):
            tokens.extend(f"[PAD{j}]" for j in range(len(tokens), i + 1))
            types.extend([T.UNUSED] * (i + 1 - len(types)))
            scores.extend([-1000.0] * (i + 1 - len(scores)))
        if types[i] in (T.NORMAL, T.UNUSED) or tokens[i] != content.encode("utf-8"):
            tokens[i] = content.encode("utf-8")
            types[i] = T.CONTROL if special else T.USER_DEFINED
            scores[i] = -1000.0
    vocab = Vocab("llama", "default", tokens, types, scores, add_space_prefix=_space_after_special(hf))
    _pad(vocab, size, len(tokens))
    return vocab


def _byte_level_regex(pre: dict[str, Any] | None) -> bool:
    """True if the pre-tokenizer is exactly ByteLevel with GPT-2's split regex."""
    if pre and pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    return bool(pre) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def bpe_vocab(hf: Any, size: int, source: str) -> Vocab:
    """A byte-level BPE tokenizer (tokenizer.json) as llama.cpp's "gpt2" vocabulary with merges."""
    gguf = _gguf()
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise GGUFError(f"{source}: no tokenizer.model and no fast (tokenizer.json) tokenizer: cannot write "
                        "its vocabulary as GGUF")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") or not _byte_level_regex(spec.get("pre_tokenizer")):
        raise GGUFError(f"{source}: GGUF export supports SentencePiece (tokenizer.model) and GPT-2-style "
                        "byte-level BPE tokenizers; this one is "
                        f"{model.get('type')!r} with pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')!r}. "
                        "Use --fuse, then llama.cpp's convert_hf_to_gguf.py")
    by_id = {int(i): t for t, i in model.get("vocab", {}).items()}
    added = _added(hf)
    by_id.update({i: c for i, (c, _) in added.items()})
    n = max(by_id) + 1 if by_id else 0
    T = gguf.TokenType
    tokens: list[str | bytes] = []
    types: list[int] = []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(T.NORMAL if i not in added else T.CONTROL if added[i][1] else T.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    vocab = Vocab("gpt2", "gpt-2", tokens, types, merges=merges)
    _pad(vocab, size, n)
    return vocab


def vocab_for(tokenizer: Any, model_dir: Path, size: int) -> Vocab:
    hf = _hf(tokenizer)
    if (model_dir / "tokenizer.model").is_file():
        return spm_vocab(model_dir / "tokenizer.model", hf, size)
    return bpe_vocab(hf, size, str(model_dir))


def add_flags(hf: Any) -> tuple[bool, bool]:
    """(add_bos, add_eos): whether encoding plain text adds BOS / EOS."""
    ids = hf("a")["input_ids"]
    bos = hf.bos_token_id is not None and ids[:1] == [hf.bos_token_id]
    eos = hf.eos_token_id is not None and len(ids) > 1 and ids[-1] == hf.eos_token_id
    return bos, eos


def _write_vocab(w: Any, vocab: Vocab, hf: Any) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    for kind in ("bos", "eos", "unk", "pad"):
        if (tid := getattr(hf, f"{kind}_token_id", None)) is not None:
            getattr(w, f"add_{kind}_token_id")(int(tid))
    add_bos, add_eos = add_flags(hf)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    template = getattr(hf, "chat_template", None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)


# --- weights -----------------------------------------------------------------------------------


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotate-half Q/K rows → llama.cpp's interleaved RoPE pairs (per head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(w: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype) for one tensor: 1-D float32; matrices float16 or q8_0."""
    gguf = _gguf()
    if w.ndim < 2:
        return w.astype(np.float32), None
    if gguf_type == "q8_0" and w.shape[-1] % 32 == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(w.astype(np.float32), q), q
    return w.astype(np.float16), None


def round_trip(w: np.ndarray, gguf_type: str) -> np.ndarray:
    """`w` as llama.cpp will see it (float32), after `_encode`."""
    gguf = _gguf()
    data, raw = _encode(w, gguf_type)
    return (gguf.quants.dequantize(data, raw) if raw is not None else data).astype(np.float32).reshape(w.shape)


def _params(w: Any, config: dict[str, Any], vocab_size: int, gguf_type: str) -> None:
    gguf = _gguf()
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    w.add_context_length(int(config.get("max_position_embeddings", 4096)))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(config.get("num_key_value_heads", heads))
    w.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if gguf_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def check_config(config: dict[str, Any]) -> None:
    """Refuse what this writer does not map (it writes dense Llama/Mistral models)."""
    if config.get("model_type") not in ("llama", "mistral"):
        raise GGUFError(f"GGUF export supports llama, mistral models only; this model is "
                        f"{config.get('model_type')!r}. Use --fuse, then llama.cpp's convert_hf_to_gguf.py")
    if config.get("rope_scaling"):
        raise GGUFError(f"GGUF export does not map rope_scaling {config['rope_scaling']!r}; use --fuse, then "
                        "llama.cpp's convert_hf_to_gguf.py")


def tensors(weights: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model's float32 weights under llama.cpp's names, Q/K permuted."""
    gguf = _gguf()
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    out = {}
    for key, value in weights.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"weight {key!r} has no llama.cpp tensor name")
        if key.endswith("q_proj.weight"):
            value = _permute(value, heads)
        elif key.endswith("k_proj.weight"):
            value = _permute(value, kv)
        out[name] = value
    return out


def write(path: Path, weights: dict[str, np.ndarray], config: dict[str, Any], tokenizer: Any, model_dir: Path,
          gguf_type: str, name: str) -> dict[str, Any]:
    """Write the GGUF file at `path` (the caller renames it into place). Returns what was written."""
    gguf = _gguf()
    if gguf_type not in GGUF_TYPES:
        raise GGUFError(f"unknown GGUF type {gguf_type!r}; expected one of {', '.join(GGUF_TYPES)}")
    check_config(config)
    vocab_size = int(config["vocab_size"])
    vocab = vocab_for(tokenizer, model_dir, vocab_size)
    named = tensors(weights, config)
    w = gguf.GGUFWriter(str(path), "llama")
    try:
        w.add_name(name)
        _params(w, config, vocab_size, gguf_type)
        _write_vocab(w, vocab, _hf(tokenizer))
        for tname, value in named.items():
            data, raw = _encode(value, gguf_type)
            w.add_tensor(tname, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return {"tensors": len(named), "tokenizer": vocab.model, "pre_tokenizer": vocab.pre,
            "add_bos_token": add_flags(_hf(tokenizer))[0], "add_space_prefix": vocab.add_space_prefix}


# --- verification with llama.cpp ---------------------------------------------------------------


def verifier_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def tolerance(gguf_type: str, weights: dict[str, np.ndarray], layers: int, logits: np.ndarray) -> float:
    """Max |logit difference| allowed between llama.cpp and the float32 MLX model.

    llama.cpp multiplies the stored weights with activations rounded to the same kind of type (float16
    for f16, q8_0 blocks for q8_0). Each matrix product then carries a relative error of about
    e = √(e_w² + e_a²), e_w the measured RMS relative rounding error of this model's matrices and e_a the
    type's (f16: the unit roundoff u / √3; q8_0: the block step 1/(2·127)/√3 against the block maximum,
    times max/RMS ≈ 3 for a block of 32 normal values). A block has 7 products on the residual stream
    and the output head one more: n = 7·layers + 1 independent errors, √n·e relative to the logits'
    RMS; the maximum over every logit of the check is allowed 6 of those (measured on the demo model:
    f16 2.9e-3 against 1.1e-2, q8_0 0.046 against 0.26).
    """
    num = den = 0.0
    for w in weights.values():
        if w.ndim == 2:
            num += float(np.square(round_trip(w, gguf_type) - w).sum())
            den += float(np.square(w).sum())
    e_w = math.sqrt(num / den) if den else 0.0
    e_a = F16_U / math.sqrt(3) if gguf_type == "f16" else 3 * Q8_0_U / math.sqrt(3)
    rms = float(np.sqrt(np.mean(np.square(logits))))
    return 6 * math.sqrt(7 * layers + 1) * math.hypot(e_w, e_a) * max(1.0, rms)


def run_llama_cpp(path: Path, texts: Sequence[str], prompts: Sequence[Sequence[int]],
                  timeout: float = VERIFY_TIMEOUT) -> tuple[list[list[int]], list[np.ndarray]]:
    """llama.cpp's token ids for `texts` and logits for `prompts`, from a child process."""
    with tempfile.TemporaryDirectory(prefix="tunedeck-gguf-check-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.npz"
        req.write_text(json.dumps({"path": str(path), "texts": list(texts), "prompts": [list(p) for p in prompts]}),
                       encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-m", "tunedeck.core.gguf_export",
                                   str(req), str(res)], capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            raise GGUFError(f"llama.cpp did not finish checking {path} within {timeout:.0f} s") from None
        if proc.returncode != 0 or not res.is_file():
            raise GGUFError(f"llama.cpp cannot use {path.name}: {_reason(proc.stderr, proc.returncode)}")
        with np.load(res) as data:
            ids = json.loads(str(data["ids"]))
            logits = [data[f"logits{i}"] for i in range(len(prompts))]
    return ids, logits


def _reason(stderr: str, code: int) -> str:
    """The telling lines of a failed llama.cpp run (its own error lines, else the last line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    telling = [ln for ln in lines if any(w in ln.lower() for w in ("error", "invalid", "failed", "what()"))]
    text = "; ".join(dict.fromkeys(telling[-3:] or lines[-1:])) or f"exit status {code}"
    return text if code >= 0 else f"{text} (killed by signal {-code})"


def first_mismatch(want: list[int], got: list[int]) -> int:
    n = min(len(want), len(got))
    return next((i for i in range(n) if want[i] != got[i]), n)


def _child(request: Path, result: Path) -> None:
    """Run in the child: load the GGUF twice (vocabulary only, then the full model) and save the results."""
    from llama_cpp import Llama

    req = json.loads(request.read_text(encoding="utf-8"))
    vocab = Llama(req["path"], vocab_only=True, verbose=False)
    ids = [vocab.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in req["texts"]]
    del vocab
    n_ctx = max([8, *(len(p) for p in req["prompts"])])
    out: dict[str, Any] = {"ids": np.array(json.dumps(ids))}
    if req["prompts"]:
        model = Llama(req["path"], n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False, seed=0)
        for i, prompt in enumerate(req["prompts"]):
            model.reset()
            model.eval(prompt)
            out[f"logits{i}"] = np.array(model.scores[: len(prompt)], dtype=np.float32)
    np.savez(result, **out)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
