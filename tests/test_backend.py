"""Backend choice: the pure decision table, and what this machine gets."""

from __future__ import annotations

import os
import subprocess
import sys

from tunedeck.core import backend as B

BLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def test_metal_and_cuda_train_in_bf16() -> None:
    assert B.decide("Darwin", True, False, None, "").dtype == "bfloat16"
    b = B.decide("Linux", False, True, BLAS, "")
    assert (b.kind, b.dtype, b.blas, b.env) == ("cuda", "bfloat16", None, {})


def test_linux_cpu_float32_with_openblas_preload() -> None:
    b = B.decide("Linux", False, False, BLAS, "")
    assert (b.kind, b.dtype, b.blas, b.blas_active) == ("cpu", "float32", BLAS, False)
    assert BLAS in b.env["LD_PRELOAD"]
    assert B.decide("Linux", False, False, BLAS, f"/x.so {BLAS}").blas_active


def test_missing_openblas_is_reported_with_the_fix() -> None:
    b = B.decide("Linux", False, False, None, "")
    assert b.blas is None and b.dtype == "float32"
    assert B.OPENBLAS_HINT in b.note and "slower" in b.note


def test_preload_is_not_duplicated(monkeypatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", BLAS)
    b = B.decide("Linux", False, False, BLAS, BLAS)
    assert b.env["LD_PRELOAD"].split().count(BLAS) == 1


def test_dtype_override() -> None:
    b = B.decide("Linux", False, False, BLAS, "")
    assert B.dtype_for(b) == "float32" and B.dtype_for(b, "bfloat16") == "bfloat16"


def test_find_openblas(tmp_path) -> None:
    lib = tmp_path / "libblas.so.3"
    assert B.find_openblas((str(lib),)) is None
    lib.write_bytes(b"")
    assert B.find_openblas(("/nope", str(lib))) == str(lib)


def test_this_machine_detects_cpu_and_subprocess_env_preloads() -> None:
    b = B.detect()
    assert b.kind == "cpu" and b.dtype == "float32"
    env = B.subprocess_env()
    if B.find_openblas():
        code = "import os; print(open('/proc/self/maps').read().count('openblas'))"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert int(out.stdout) > 0
    else:
        assert "LD_PRELOAD" not in env or env["LD_PRELOAD"] == os.environ.get("LD_PRELOAD")


def test_every_model_load_lowers_cuda_graph_limits_unless_the_user_set_them(monkeypatch, demo_model) -> None:
    """Training, evaluation, the audit (core.model.load_base) and chat (load_for_inference) each load a model
    before their first GPU operation: on CUDA that is where MLX's graph limits must be set (they set the
    7B peak: bench/results/h200_bf16_sft_ab.txt). Here on a CPU the backend is made to read as CUDA."""
    from tunedeck.core import model
    from tunedeck.core.config import ModelConfig

    cuda = B.decide("Linux", False, True, None, "")
    for load in (lambda: model.load_base(ModelConfig(path=str(demo_model)), "float32"),
                 lambda: model.load_for_inference(str(demo_model), dtype="float32")):
        for key in B.CUDA_GRAPH_LIMITS:
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setattr(B, "detect", lambda: B.decide("Linux", False, False, BLAS, ""))
        load()
        assert not any(key in os.environ for key in B.CUDA_GRAPH_LIMITS)  # a CPU: nothing set
        monkeypatch.setattr(B, "detect", lambda: cuda)
        monkeypatch.setenv("MLX_MAX_OPS_PER_BUFFER", "7")
        load()
        assert os.environ["MLX_MAX_OPS_PER_BUFFER"] == "7"  # the user's own value stands
        assert os.environ["MLX_MAX_MB_PER_BUFFER"] == "100"
