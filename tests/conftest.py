"""Shared fixtures: an isolated user cache (the demo model is built once per session into it)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Isolate the user cache and config for the whole session, subprocesses included.
_HOME = Path(tempfile.mkdtemp(prefix="tunedeck-test-home-"))
os.environ["XDG_CACHE_HOME"] = str(_HOME / "cache")
os.environ["XDG_CONFIG_HOME"] = str(_HOME / "config")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# "demo" means the random-weight demo model (built in seconds) for the whole suite, subprocesses included
# (outside the suite it means the pre-trained one, ~2 minutes to build): many tests' tolerances and timings
# assume it. The one test of the pre-trained model builds it with a few steps (tests/test_demo_model.py).
os.environ["TUNEDECK_DEMO_PRETRAINED"] = "0"

BIN = Path(sys.executable).parent / "tunedeck"

# float32 arithmetic, for tolerances (machine epsilon: one ulp of 1.0)
F32_EPS = 2.0**-23
# Mean completion length (tokens) of the first 64 sample examples with the demo tokenizer (measured: 36.8),
# and the demo vocabulary: an untrained model's log-probs are about -log(V) per token.
DEMO_COMPLETION_TOKENS = 37
DEMO_VOCAB = 2000


def logp_sum_atol(tokens: int = DEMO_COMPLETION_TOKENS, vocab: int = DEMO_VOCAB) -> float:
    """How far two float32 evaluations of one sequence log-prob sum may differ (absolute).

    The sum has T terms of size about log V, so |S| ≈ T·log V; when the two evaluations order their
    reductions differently, rounding errors of about one ulp of the running sum accumulate like a random walk
    over the T additions: ≈ √T·ε·|S|. (Demo: √37 · 1.19e-7 · 37 · 7.6 ≈ 2.0e-4.)"""
    return math.sqrt(tokens) * F32_EPS * tokens * math.log(vocab)


def kl_atol() -> float:
    """Absolute tolerance for KTO's KL estimate z = max(0, mean(Σlog π − Σlog π_ref)) computed two ways:
    two sums per pair (policy and reference), the mean does not add error beyond them, and the clamp is
    1-Lipschitz, so it bounds clamped estimates too (where the true value is 0, one path may return an exact
    0 and the other a few ulps of rounding)."""
    return 2 * logp_sum_atol()


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo model with random weights (the 4M-parameter `tiny` shape), built once for the session into
    the isolated cache in seconds: tests check mechanics, not answers, and their tolerances and the CI time
    budget are set for it (the pre-trained model takes ~2 minutes to build)."""
    from tunedeck.core import demo

    return demo.ensure(random=True)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    from tunedeck.core import demo

    return demo.sample_dataset()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `tunedeck` console script in a real subprocess."""
    return subprocess.run(
        [str(BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, input=input,
    )


def small_dataset(dest: Path, n: int = 64) -> Path:
    """The first `n` lines of the bundled sample data (both labels occur early in it)."""
    from tunedeck.core import demo

    lines = demo.sample_dataset().read_text(encoding="utf-8").splitlines(keepends=True)[:n]
    dest.write_text("".join(lines), encoding="utf-8")
    return dest


def small_config(workspace: Path, method: str = "kto", n: int = 64, **train: object) -> Path:
    """A demo-model config over a small dataset, sized to train in seconds on a CPU."""
    from tunedeck.core import config as C

    workspace.mkdir(parents=True, exist_ok=True)
    data = small_dataset(workspace / "data.jsonl", n)
    cfg = C.preset("demo", str(data))
    cfg.train.method = method
    cfg.data.max_seq_len = 256
    cfg.data.valid_fraction = 0.125
    cfg.lora.rank = 4
    cfg.train.iters = 6
    cfg.train.warmup_steps = 1
    cfg.train.save_every = 3
    cfg.train.eval_every = 3
    cfg.train.eval_batches = 1
    cfg.train.learning_rate = 1e-3
    for key, value in train.items():
        setattr(cfg.train, key, value)
    path = workspace / "tunedeck.toml"
    C.save(cfg, path)
    return path


def wait_for(run_dir: Path, pred, timeout: float = 240) -> dict:
    """The first event of a run satisfying `pred`, polling its event log."""
    import time

    from tunedeck.core import runs

    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in runs.read_events(run_dir):
            if pred(e):
                return e
        time.sleep(0.1)
    raise AssertionError(f"timed out; events: {runs.read_events(run_dir)}; log: {runs.tail_log(run_dir, 40)}")


def wait_until(cond, timeout: float, what: str) -> None:
    """Poll `cond` until it is true, or fail naming `what`."""
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
