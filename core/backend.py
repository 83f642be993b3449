"""Where MLX runs and how: Apple Metal, CUDA or a CPU; the dtype to train in; OpenBLAS on Linux CPUs.

MLX's Linux CPU wheel bundles a reference BLAS (~6 GFLOP/s for a float32 1024^3 matmul). Debian's
OpenBLAS, preloaded into the process, is ~30x faster with identical results, but only for float32:
so on a Linux CPU we train in float32 and spawn training with `LD_PRELOAD` set. LD_PRELOAD is read
when a process starts, which is why the `tunedeck` entry point re-executes itself once with it.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
)
OPENBLAS_HINT = "apt-get install libopenblas0-pthread"
REEXEC_FLAG = "TUNEDECK_REEXECED"
# MLX's CUDA backend batches kernels into CUDA graphs and holds the arrays a graph uses until it has run; at its
# H100/H200 defaults (100 ops, 1,000 MB a graph) a 7B bf16 4 x 512 training step without checkpointing peaked
# 7 GB higher on an H200 (35.5 -> 28.5 GB with these, the step time unchanged: bench/results/h200_bf16_sft_ab.txt).
CUDA_GRAPH_LIMITS = {"MLX_MAX_OPS_PER_BUFFER": "20", "MLX_MAX_MB_PER_BUFFER": "100"}


@dataclass(frozen=True)
class Backend:
    kind: str  # "metal" | "cuda" | "cpu"
    dtype: str  # "bfloat16" | "float32"
    blas: str | None  # OpenBLAS library to preload (Linux CPU only)
    blas_active: bool  # whether this process already has it preloaded
    note: str  # one line for humans: what was chosen and why

    @property
    def env(self) -> dict[str, str]:
        """Extra environment for a training/generation subprocess."""
        return {"LD_PRELOAD": _with_preload(os.environ.get("LD_PRELOAD", ""), self.blas)} if self.blas else {}


def _with_preload(current: str, lib: str) -> str:
    parts = [p for p in current.replace(":", " ").split() if p]
    return " ".join(parts if lib in parts else [lib, *parts])


def find_openblas(candidates: tuple[str, ...] = OPENBLAS_CANDIDATES) -> str | None:
    return next((c for c in candidates if Path(c).is_file()), None)


def decide(system: str, has_metal: bool, has_cuda: bool, openblas: str | None, preloaded: str) -> Backend:
    """Pure decision: device kind, training dtype and BLAS preload from the facts given."""
    if has_metal:
        return Backend("metal", "bfloat16", None, False, "Apple GPU (Metal), training in bfloat16")
    if has_cuda:
        return Backend("cuda", "bfloat16", None, False, "NVIDIA GPU (CUDA), training in bfloat16")
    if system != "Linux":
        return Backend("cpu", "float32", None, False, f"CPU on {system}, training in float32")
    if openblas is None:
        return Backend(
            "cpu", "float32", None, False,
            "Linux CPU with MLX's reference BLAS: float32 matmuls run ~30x slower than with OpenBLAS; "
            f"install it with `{OPENBLAS_HINT}`",
        )
    active = openblas in preloaded.replace(":", " ").split()
    state = "preloaded" if active else "will be preloaded into training"
    return Backend("cpu", "float32", openblas, active, f"Linux CPU, float32, OpenBLAS {state}")


def detect() -> Backend:
    """Look at this machine and MLX build and decide."""
    import mlx.core as mx

    has_metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    has_cuda = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    return decide(platform.system(), has_metal, has_cuda, find_openblas(), os.environ.get("LD_PRELOAD", ""))


def reexec_argv_env(argv: list[str], module: str) -> tuple[list[str], dict[str, str]] | None:
    """If this Linux process lacks the OpenBLAS preload, the argv/env to re-run `python -m module argv` with; else None."""
    if platform.system() != "Linux" or os.environ.get(REEXEC_FLAG) or os.environ.get("TUNEDECK_NO_BLAS"):
        return None
    lib = find_openblas()
    if lib is None or lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        return None
    env = dict(os.environ, LD_PRELOAD=_with_preload(os.environ.get("LD_PRELOAD", ""), lib))
    env[REEXEC_FLAG] = "1"
    return [sys.executable, "-m", module, *argv], env


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child Python process that runs MLX work (OpenBLAS preloaded on Linux CPUs)."""
    env = dict(os.environ)
    lib = find_openblas() if platform.system() == "Linux" and not os.environ.get("TUNEDECK_NO_BLAS") else None
    if lib:
        env["LD_PRELOAD"] = _with_preload(env.get("LD_PRELOAD", ""), lib)
        env[REEXEC_FLAG] = "1"
    env.update(extra or {})
    return env


def limit_cuda_graphs() -> None:
    """On CUDA, CUDA_GRAPH_LIMITS for this process wherever the environment does not set them. MLX reads them
    when a stream's first kernel is queued: call it before the process's first GPU operation."""
    if detect().kind == "cuda":
        for key, value in CUDA_GRAPH_LIMITS.items():
            os.environ.setdefault(key, value)


def dtype_for(backend: Backend, requested: str = "auto") -> str:
    """Training dtype: the config's choice unless "auto"; float16/bfloat16 on a CPU are honoured but slow."""
    return backend.dtype if requested == "auto" else requested
