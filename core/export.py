"""Export a run's adapter: a fused model directory, a GGUF file, or a PEFT (Hugging Face) adapter.

- ``fuse``: base + adapter → one model directory that `mlx_lm.load` loads (mlx-lm's own fuse
  machinery: each LoRA/DoRA layer's ``.fuse()``, `mlx_lm.utils.save_model` / `save_config`, the base's
  tokenizer files copied verbatim). Before the directory is moved into place it is loaded back with
  `mlx_lm.load` and its logits on a short chat prompt are compared with base + adapter; the export
  fails (nothing written) if the max abs difference exceeds the tolerance: by default
  ``TOLERANCE_REL[dtype] × max(1, max |logit|)`` (float32 1e-4, float16 0.05, bfloat16 0.1), or an
  absolute ``tolerance``. A quantized base is de-quantized by default, so the fused model computes
  exactly base + adapter; ``requantize`` keeps it quantized (as `mlx_lm fuse` does: smaller, but
  the re-quantization rounding moves the logits, often by as much as the adapter itself; the
  report shows both, and the default tolerance is then 0.5 relative).
  Weights are saved in the dtype the run computes in (float32 on a Linux CPU, else the config's).
- ``gguf``: base + adapter fused (a quantized base de-quantized), written by `core.gguf_export` with the
  GGUF project's own writer as f16 or q8_0 (llama / mistral). With llama-cpp-python installed the file is
  checked in llama.cpp before it is moved into place (it loads; rendered conversations of the run's data
  tokenize to the Hugging Face tokenizer's ids; logits on a few prompts match the fused float32 MLX model
  within `gguf_export.tolerance`); a failed check leaves nothing. Without it the export says it is
  unverified. ``ollama``: a directory with ``model.gguf`` and a ``Modelfile`` (`core.ollama`).
- ``hf``: a PEFT LoRA adapter: ``adapter_model.safetensors`` + ``adapter_config.json``. MLX computes
  ``y = W x + scale · (x @ lora_a) @ lora_b`` with ``lora_a: [in, r]``, ``lora_b: [r, out]``; PEFT
  computes ``y = W x + (lora_alpha / r) · B (A x)`` with ``lora_A.weight: [r, in]``,
  ``lora_B.weight: [out, r]``. So ``A = lora_a.T``, ``B = lora_b.T`` (both TRANSPOSED) and
  ``lora_alpha = scale · r`` (plain LoRA scaling, use_rslora false). Keys:
  ``<mlx module path>.lora_a`` → ``base_model.model.<mlx module path>.lora_A.weight`` (mlx-lm keeps the
  Hugging Face module names). DoRA adapters are refused (mlx-lm's magnitude vector is not mapped).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import gguf_export as G
from . import ollama as ollama_mod
from .evaluate import EvalError, RunModel, adapter_dir, load_run_model, run_config
from .fsutil import atomic_dir
from .fused_model import base_config, copy_tokenizer, fuse_layers, model_logits
from .model import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    QUANT_GROUP_SIZE,
    ModelError,
    adapters_disabled,
    check_adapter_files,
    is_quantized,
    resolve_path,
)

Progress = Callable[[str], None]
OLLAMA_GGUF = "model.gguf"
# the GGUF check: rendered conversations tokenized by llama.cpp, and logits on the first few (cut to a length)
VERIFY_SAMPLES = 100
VERIFY_PROMPTS = 3
VERIFY_PROMPT_TOKENS = 96
VERIFY_TEXT = "Find my notes about the garden and add a line about planting tomatoes in May."
# default max |logit difference| between the fused model and base + adapter, relative to
# max(1, max |logit|), by dtype; "requantized": the fused weights were quantized again
TOLERANCE_REL = {"float32": 1e-4, "float16": 0.05, "bfloat16": 0.1, "requantized": 0.5}
PEFT_PREFIX = "base_model.model."


class ExportError(EvalError):
    """An export that cannot be done, or whose output failed verification."""


def _checked_adapter(run_dir: Path, checkpoint: str | None) -> Path:
    """The run's adapter directory, refused (ExportError naming the file) if its files are damaged."""
    adir = adapter_dir(run_dir, checkpoint)
    try:
        check_adapter_files(adir)
    except ModelError as e:
        raise ExportError(str(e)) from None
    return adir


def _prepare_out(out: Path, run_dir: Path, force: bool) -> None:
    out_r, run_r = out.resolve(), run_dir.resolve()
    if out_r == run_r or out_r in run_r.parents:
        raise ExportError(f"refusing to write over {out}: it holds the run directory")
    if out.exists():
        if not force:
            raise ExportError(f"{out} already exists (use --force to replace it)")
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)


def _share(out: Path) -> None:
    """Give an exported directory the usual permissions (temp dirs are created 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o777 & ~umask)


def _is_write_error(e: Exception) -> bool:
    """An OSError, or the RuntimeError MLX raises when a write fails (e.g. a full disk)."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and "write" in str(e).lower())


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Turn a failed write into ExportError("cannot write OUT: ..."); `atomic_dir` removes the partial output."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not _is_write_error(e):
            raise
        name = f"{e.filename}: " if isinstance(e, OSError) and e.filename else ""
        raise ExportError(f"cannot write {out}: {name}{e.strerror if isinstance(e, OSError) and e.strerror else e}"
                          ) from None


def _verify_ids(tok: Any) -> list[int]:
    from .template import TemplateError, encode_prompt

    try:
        return encode_prompt(tok, [{"role": "user", "content": VERIFY_TEXT}])
    except TemplateError as e:
        raise ExportError(str(e)) from None


def fuse(run_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None, model: str | None = None,
         requantize: bool = False, tolerance: float | None = None, force: bool = False,
         progress: Progress | None = None) -> dict[str, Any]:
    """Write base + adapter fused into `out_dir`, verified by logits. Returns a report dict."""
    from mlx_lm.utils import save_config, save_model

    say = progress or (lambda _m: None)
    run_dir, out = Path(run_dir), Path(out_dir)
    run_config(run_dir)
    _checked_adapter(run_dir, checkpoint)
    _prepare_out(out, run_dir, force)
    say(f"export: loading the base model and adapter of {run_dir}")
    rm = load_run_model(run_dir, checkpoint, model)
    ids = _verify_ids(rm.tokenizer)
    ref = model_logits(rm.model, ids)
    with adapters_disabled(rm.model):
        effect = float(np.abs(model_logits(rm.model, ids) - ref).max())
    quantized = is_quantized(rm.model)
    requantized = quantized and requantize
    net, config, n, notes = _fused(rm, quantized, requantized)
    scale = float(np.abs(ref).max())
    kind = "requantized" if requantized else rm.dtype
    tol = TOLERANCE_REL.get(kind, 0.1) * max(1.0, scale) if tolerance is None else tolerance
    with atomic_dir(out) as tmp:
        say(f"export: fused {n} adapter layers; writing {out}")
        with _writing(out):
            save_model(tmp, net, donate_model=False)
            save_config(config, config_path=tmp / "config.json")
            copy_tokenizer(rm.model_dir, tmp, rm.tokenizer)
        diff = _check_fused(tmp, out, rm.dtype, ids, ref, tol, say)
    report = {"kind": "fuse", "out": str(out), "adapter": str(rm.adapter_dir), "base": str(rm.model_dir),
              "layers_fused": n, "dtype": rm.dtype, "quantized": requantized, "verify_tokens": len(ids),
              "max_abs_diff": diff, "max_abs_logit": scale, "adapter_effect": effect, "tolerance": tol,
              "notes": notes}
    _share(out)
    say(f"export: verified: max |logit diff| {diff:.3g} over {len(ids)} tokens (tolerance {tol:g}; "
        f"the adapter itself moves the logits by up to {effect:.3g})")
    return report


def _fused(rm: RunModel, quantized: bool, requantized: bool) -> tuple[nn.Module, dict[str, Any], int, list[str]]:
    """The run's model with its adapter fused, the config.json to save with it, the number of layers fused
    and notes for the report: a quantized base is de-quantized, unless it is `requantized`."""
    from mlx_lm.utils import dequantize_model

    net, config = rm.model, base_config(rm.model_dir)
    n = fuse_layers(net, dequantize=not requantized)
    notes = []
    if quantized and not requantized:
        net = dequantize_model(net)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
        notes.append(f"the base is quantized: the fused model is de-quantized ({rm.dtype}) so that it computes "
                     "exactly base + adapter; --requantize keeps it quantized")
    elif requantized:
        if "quantization" not in config:  # quantized on load (model.quantize): let mlx_lm.load rebuild the layers
            config["quantization"] = {"group_size": QUANT_GROUP_SIZE, "bits": rm.cfg.model.quantize, "mode": "affine"}
        notes.append("fused weights were re-quantized (as mlx_lm fuse does); the logit difference is that rounding")
    if not requantized:
        config["torch_dtype"] = rm.dtype
    return net, config, n, notes


def _check_fused(tmp: Path, out: Path, dtype: str, ids: list[int], ref: np.ndarray, tol: float,
                 say: Progress) -> float:
    """Load the fused model written to `tmp` back with mlx_lm.load; the max |logit difference| from base +
    adapter (`ref`) on `ids`, ExportError when it does not load or the difference is over `tol`."""
    import mlx_lm

    say("export: verifying: loading the fused model back with mlx_lm.load")
    try:
        fused_model, _ = mlx_lm.load(str(tmp))
    except Exception as e:  # noqa: BLE001 - any load failure means the export is unusable
        raise ExportError(f"the fused model does not load with mlx_lm.load: {type(e).__name__}: {e}") from None
    fused_model.set_dtype(getattr(mx, dtype))
    fused_model.eval()
    got = model_logits(fused_model, ids)
    diff = float(np.abs(got - ref).max())
    if not np.isfinite(diff) or diff > tol:
        raise ExportError(f"verification failed: fused vs base+adapter logits differ by up to {diff:.3g} "
                          f"(tolerance {tol:g}, logits up to {float(np.abs(ref).max()):.3g}); nothing written to {out}")
    return diff


def _sample(rm: RunModel, n: int) -> list[list[dict[str, str]]]:
    """Up to `n` conversations of the run's dataset (set-aside lines skipped), else the verify prompt."""
    from .data import DataError, load

    try:
        examples = load(rm.cfg.data.path, strict=False).examples[:n]
    except (DataError, OSError):
        examples = []
    return [ex.messages for ex in examples] or [[{"role": "user", "content": VERIFY_TEXT}]]


def _rendered(tok: Any, conversations: list[list[dict[str, str]]]) -> list[str]:
    from .template import TemplateError, has_chat_template, render_chat

    if not has_chat_template(tok):
        return [m["content"] for conv in conversations for m in conv]
    try:
        return [render_chat(tok, conv, add_generation_prompt=False) for conv in conversations]
    except TemplateError as e:
        raise ExportError(str(e)) from None


def _check_tokens(texts: list[str], want: list[list[int]], got: list[list[int]], out: Path) -> None:
    bad = [i for i, (w, g) in enumerate(zip(want, got)) if w != g]
    if bad:
        i = bad[0]
        at = G.first_mismatch(want[i], got[i])
        raise ExportError(
            f"verification failed: llama.cpp tokenizes {len(bad)} of {len(texts)} rendered conversations "
            f"differently from the model's tokenizer (conversation {i + 1}, token {at}: llama.cpp "
            f"{got[i][at:at + 4]} vs {want[i][at:at + 4]}); nothing written to {out}")


def _verify(tmp: Path, out: Path, rm: RunModel, net: nn.Module, conversations: list[list[dict[str, str]]],
            weights: dict[str, np.ndarray], gguf_type: str, tolerance: float | None,
            say: Progress) -> dict[str, Any]:
    """Load `tmp` in llama.cpp: tokenization of the rendered conversations and logits on a few prompts."""
    hf = getattr(rm.tokenizer, "_tokenizer", rm.tokenizer)
    texts = _rendered(rm.tokenizer, conversations)
    want = [list(hf(t, add_special_tokens=False)["input_ids"]) for t in texts]
    prompts = [ids[:VERIFY_PROMPT_TOKENS] for ids in want[:VERIFY_PROMPTS]]
    refs = [model_logits(net, p)[0] for p in prompts]
    say(f"export: verifying {out.name} in llama.cpp: {len(texts)} rendered conversations, logits on "
        f"{len(prompts)} prompts")
    try:
        got, logits = G.run_llama_cpp(tmp, texts, prompts)
    except G.GGUFError as e:
        raise ExportError(f"verification failed: {e}; nothing written to {out}") from None
    _check_tokens(texts, want, got, out)
    diff = max(float(np.abs(g - r).max()) for g, r in zip(logits, refs))
    ref_all = np.concatenate(refs)
    layers = int(base_config(rm.model_dir)["num_hidden_layers"])
    tol = G.tolerance(gguf_type, weights, layers, ref_all) if tolerance is None else tolerance
    if not np.isfinite(diff) or diff > tol:
        raise ExportError(f"verification failed: llama.cpp's logits differ from the fused model's by up to "
                          f"{diff:.3g} (tolerance {tol:.3g} for {gguf_type}); nothing written to {out}")
    say(f"export: verified in llama.cpp: tokens identical on {len(texts)} conversations; max |logit diff| "
        f"{diff:.3g} (tolerance {tol:.3g} for {gguf_type})")
    return {"verified": True, "conversations": len(texts), "max_abs_diff": diff, "tolerance": tol,
            "max_abs_logit": float(np.abs(ref_all).max())}


def _gguf_target(out: Path, ollama: bool) -> None:
    if ollama:
        if out.exists() and not out.is_dir():
            raise ExportError(f"{out} exists and is not a directory")
        return
    if out.suffix != ".gguf":
        raise ExportError(f"{out}: a GGUF file name must end in .gguf")
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give a file name ending in .gguf")


def _fused_weights(rm: RunModel) -> tuple[nn.Module, dict[str, np.ndarray], int, bool]:
    """The run's model with its adapter fused, de-quantized, in float32, and its weights as NumPy arrays."""
    from mlx_lm.utils import dequantize_model

    net = rm.model
    quantized = is_quantized(net)
    n = fuse_layers(net, dequantize=True)
    if quantized:
        net = dequantize_model(net)
    net.set_dtype(mx.float32)
    net.eval()
    weights = {k: np.array(v) for k, v in tree_flatten(net.parameters())}
    return net, weights, n, quantized


def _write_gguf_file(tmp: Path, rm: RunModel, weights: dict[str, np.ndarray], config: dict[str, Any],
                     gguf_type: str, out: Path) -> dict[str, Any]:
    try:
        return G.write(tmp, weights, config, rm.tokenizer, rm.model_dir, gguf_type, name=out.stem)
    except G.GGUFError as e:
        raise ExportError(str(e)) from None
    except (OSError, RuntimeError) as e:
        if not _is_write_error(e):
            raise
        raise ExportError(f"cannot write {out}: {e}") from None


def _check_gguf_source(run_dir: Path, checkpoint: str | None, model: str | None, gguf_type: str) -> None:
    """Refuse, before anything loads, an unknown GGUF type, a damaged adapter, or a base whose config.json
    the GGUF writer does not handle."""
    if gguf_type not in G.GGUF_TYPES:
        raise ExportError(f"unknown GGUF type {gguf_type!r}; expected one of {', '.join(G.GGUF_TYPES)}")
    cfg = run_config(run_dir)
    _checked_adapter(run_dir, checkpoint)
    try:
        base_dir = Path(resolve_path(model or cfg.model.path))
        if (base_dir / "config.json").is_file():
            G.check_config(json.loads((base_dir / "config.json").read_text(encoding="utf-8")))
    except (ModelError, G.GGUFError) as e:
        raise ExportError(str(e)) from None


def export_gguf(run_dir: str | Path, out: str | Path, checkpoint: str | None = None, model: str | None = None,
                gguf_type: str = "f16", ollama: bool = False, tolerance: float | None = None,
                samples: int = VERIFY_SAMPLES, force: bool = False,
                progress: Progress | None = None) -> dict[str, Any]:
    """Fuse, de-quantize and write a GGUF (`gguf_type` f16 or q8_0), checked in llama.cpp when it is installed.

    ollama: `out` is a directory that gets `model.gguf` and a `Modelfile`. Nothing is left at `out`
    unless the file was written and, with llama-cpp-python installed, passed its check.
    """
    say = progress or (lambda _m: None)
    run_dir, out = Path(run_dir), Path(out)
    _check_gguf_source(run_dir, checkpoint, model, gguf_type)
    _gguf_target(out, ollama)
    _prepare_out(out, run_dir, force)
    say(f"export: loading the base model and adapter of {run_dir}")
    rm = load_run_model(run_dir, checkpoint, model)
    config = base_config(rm.model_dir)
    net, weights, n, quantized = _fused_weights(rm)
    hf = getattr(rm.tokenizer, "_tokenizer", rm.tokenizer)
    conversations = _sample(rm, samples)
    modelfile = _modelfile(hf, config, conversations) if ollama else None
    say(f"export: fused {n} adapter layers; writing a {gguf_type} GGUF")
    with contextlib.ExitStack() as stack:
        if ollama:
            folder = stack.enter_context(atomic_dir(out))
            tmp, final = folder / OLLAMA_GGUF, out / OLLAMA_GGUF
        else:
            tmp, final = out.with_name(f".{out.stem}.tmp.gguf"), out
            stack.callback(lambda: tmp.unlink(missing_ok=True))
        info = _write_gguf_file(tmp, rm, weights, config, gguf_type, out)
        check = (_verify(tmp, out, rm, net, conversations, weights, gguf_type, tolerance, say)
                 if G.verifier_available() else {"verified": False})
        if modelfile is not None:
            with _writing(out):
                (tmp.parent / ollama_mod.MODELFILE).write_text(modelfile, encoding="utf-8")
        else:
            os.replace(tmp, final)
    if ollama:
        _share(out)
    notes = []
    if quantized:
        notes.append("the base is quantized: de-quantized before export; the GGUF holds the fused weights as "
                     f"{gguf_type}")
    if not check["verified"]:
        say(f"export: unverified: llama-cpp-python is not installed; to check GGUF files in llama.cpp: "
            f"{G.VERIFIER_INSTALL}")
    return {"kind": "ollama" if ollama else "gguf", "out": str(out), "gguf": str(final),
            "adapter": str(rm.adapter_dir), "architecture": config["model_type"], "gguf_type": gguf_type,
            "bytes": final.stat().st_size, "dequantized": quantized, "layers_fused": n, **info, **check,
            "notes": notes}


def _modelfile(hf: Any, config: dict[str, Any], conversations: list[list[dict[str, str]]]) -> str:
    context = int(config.get("max_position_embeddings", 4096))
    try:
        return ollama_mod.modelfile(OLLAMA_GGUF, hf, G.add_flags(hf)[0], context, conversations)
    except ollama_mod.OllamaError as e:
        raise ExportError(str(e)) from None


# --- PEFT ------------------------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def peft_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """mlx-lm LoRA weights → PEFT names and layout (A = lora_a.T [r, in], B = lora_b.T [out, r])."""
    out: dict[str, mx.array] = {}
    for key, value in weights.items():
        module, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise ExportError(f"adapter weight {key!r} is not a LoRA A/B matrix (DoRA/full fine-tunes "
                              "cannot be exported as a PEFT LoRA adapter)")
        if value.ndim != 2:
            raise ExportError(f"adapter weight {key!r} has shape {tuple(value.shape)}: only plain linear "
                              "LoRA layers can be exported (not mixture-of-experts layers)")
        name = "lora_A" if leaf == "lora_a" else "lora_B"
        out[f"{PEFT_PREFIX}{module}.{name}.weight"] = mx.contiguous(value.T)
    return out


def peft_config(acfg: dict[str, Any], weights: dict[str, mx.array], base: str,
                num_hidden_layers: int | None) -> dict[str, Any]:
    """adapter_config.json for PEFT from mlx-lm's adapter config: lora_alpha = scale × r."""
    lp = acfg.get("lora_parameters", {})
    r = int(lp.get("rank", 8))
    scale = float(lp.get("scale", 20.0))
    alpha = scale * r
    modules = sorted({k.rpartition(".")[0] for k in weights})
    targets = sorted({m.rpartition(".")[2] for m in modules})
    layers = sorted({int(m.group(1)) for k in modules if (m := _LAYER.search(k + "."))})
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": float(lp.get("dropout", 0.0)),
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }
    if layers and (num_hidden_layers is None or layers != list(range(num_hidden_layers))):
        cfg["layers_to_transform"] = layers
        cfg["layers_pattern"] = "layers"
    return cfg


def export_hf(run_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None, force: bool = False,
              progress: Progress | None = None) -> dict[str, Any]:
    """Write the adapter as a PEFT LoRA adapter (no model is loaded: a pure re-layout of the weights)."""
    say = progress or (lambda _m: None)
    run_dir, out = Path(run_dir), Path(out_dir)
    cfg = run_config(run_dir)
    adir = _checked_adapter(run_dir, checkpoint)
    acfg = json.loads((adir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if acfg.get("fine_tune_type", "lora") != "lora":
        raise ExportError(f"this adapter is {acfg.get('fine_tune_type')!r}; only plain LoRA adapters can be "
                          "exported for PEFT (use --fuse for DoRA)")
    weights = mx.load(str(adir / ADAPTER_FILE))
    if not weights:
        raise ExportError(f"{adir / ADAPTER_FILE} holds no weights")
    peft = peft_weights(weights)
    r = int(acfg.get("lora_parameters", {}).get("rank", 0))
    for k, v in peft.items():
        if (v.shape[0] if ".lora_A." in k else v.shape[1]) != r:
            raise ExportError(f"{k}: shape {tuple(v.shape)} does not match rank {r} in {ADAPTER_CONFIG}")
    base = acfg.get("base_model") or cfg.model.path
    layers_total = None
    try:
        base_dir = Path(resolve_path(cfg.model.path))
        if (base_dir / "config.json").is_file():
            base = str(base_dir) if cfg.model.path == "demo" else cfg.model.path
            layers_total = json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
    except Exception:  # noqa: BLE001 - the base is only needed to decide layers_to_transform
        pass
    pcfg = peft_config(acfg, weights, base, layers_total)
    _prepare_out(out, run_dir, force)
    with atomic_dir(out) as tmp, _writing(out):
        mx.save_safetensors(str(tmp / "adapter_model.safetensors"), peft, metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(pcfg, indent=2) + "\n", encoding="utf-8")
    _share(out)
    say(f"export: wrote a PEFT LoRA adapter ({len(peft)} tensors, r={pcfg['r']}, "
        f"lora_alpha={pcfg['lora_alpha']}) to {out}")
    notes = []
    if cfg.model.quantize:
        notes.append(f"trained against a {cfg.model.quantize}-bit quantized base (QLoRA); "
                     "apply it to the full-precision base as usual")
    return {"kind": "hf", "out": str(out), "adapter": str(adir), "tensors": len(peft), "r": pcfg["r"],
            "lora_alpha": pcfg["lora_alpha"], "target_modules": pcfg["target_modules"],
            "base_model_name_or_path": base, "notes": notes}
