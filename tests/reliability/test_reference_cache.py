"""The KTO reference cache (runs/<id>/reference-*.npz): a damaged or mismatched file is a miss that is
recomputed with a warning, never a failed resume; half-written temp files are removed; a stop during
the reference pass ends it within seconds, and the run resumes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import make_run, spawn, wait_event
from tunedeck.core import config as C
from tunedeck.core import runs
from tunedeck.core.batching import Sequences
from tunedeck.core.reference import read_cache, write_cache
from tunedeck.core.trainer import Trainer

pytestmark = pytest.mark.reliability

STOP_LIMIT = 15.0  # seconds from SIGTERM to the trainer's exit during the reference pass
KEY = "k" * 64


def _seqs(n: int) -> Sequences:
    ids = [np.arange(5, dtype=np.int32) for _ in range(n)]
    s = Sequences(ids, np.full(n, 2), np.ones(n, bool))
    s.set_kl_pairs(ids, np.full(n, 2))
    return s


@pytest.mark.parametrize("arrays, problem", [
    ({"key": np.array(KEY), "logps": np.zeros(3, np.float32)}, "keys"),
    ({"key": np.array(KEY), "logps": np.zeros(2, np.float32), "kl_logps": np.zeros(3, np.float32)}, "shape"),
    ({"key": np.array(KEY), "logps": np.zeros((3, 1), np.float32), "kl_logps": np.zeros(3, np.float32)}, "shape"),
    ({"key": np.array(KEY), "logps": np.array(["a", "b", "c"]), "kl_logps": np.zeros(3, np.float32)}, "dtype"),
    ({"key": np.array(KEY), "logps": np.array([0, np.nan, 0], np.float32), "kl_logps": np.zeros(3, np.float32)},
     "non-finite"),
    ({"key": np.array(KEY), "logps": np.zeros(3, np.float32), "kl_logps": np.array([np.inf] * 3)}, "non-finite"),
], ids=["missing-key", "short", "2d", "strings", "nan", "inf"])
def test_an_invalid_cache_is_a_miss_with_a_warning(tmp_path: Path, arrays: dict, problem: str) -> None:
    path = tmp_path / "reference-train.npz"
    np.savez(path, **arrays)
    warnings: list[str] = []
    assert read_cache(path, KEY, _seqs(3), warnings.append) is None
    assert len(warnings) == 1 and warnings[0].startswith("reference-train.npz: invalid reference cache")
    assert problem in warnings[0]


def test_a_valid_cache_is_read_and_another_key_is_a_silent_miss(tmp_path: Path) -> None:
    path = tmp_path / "reference-train.npz"
    logps, kl = np.array([-1.0, -2.0, -3.0], np.float32), np.array([-4.0, -5.0, -6.0], np.float32)
    write_cache(path, KEY, logps, kl)
    warnings: list[str] = []
    got = read_cache(path, KEY, _seqs(3), warnings.append)
    assert got is not None and np.array_equal(got[0], logps) and np.array_equal(got[1], kl)
    assert read_cache(path, "other", _seqs(3), warnings.append) is None and warnings == []
    assert [p.name for p in tmp_path.iterdir()] == ["reference-train.npz"]  # no temp file left


def _damage(path: Path, how: str, logps: np.ndarray) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2 :]
    else:  # one bit flipped inside the stored log-probs
        at = data.find(logps.tobytes())
        assert at > 0
        data[at + 5] ^= 0x04
    path.write_bytes(bytes(data))


def _resume_longer(run_dir: Path, iters: int) -> int:
    cfg, _ = C.load(run_dir / "config.toml", [f"train.iters={iters}"])
    C.save(cfg, run_dir / "config.toml")
    return Trainer(run_dir, resume=True).run()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_cache_is_recomputed_on_resume(tmp_path: Path, how: str) -> None:
    run_dir = make_run(tmp_path, "kto", iters=2, save_every=2)
    assert Trainer(run_dir).run() == 0
    cache = run_dir / "reference-train.npz"
    with np.load(cache) as f:
        before = {k: f[k] for k in f.files}
    _damage(cache, how, before["logps"])
    (run_dir / "reference-valid.tmp.npz").write_bytes(b"half-written")  # a writer killed mid-file
    assert _resume_longer(run_dir, 3) == 0
    events = runs.read_events(run_dir)
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any(m.startswith("reference-train.npz: invalid reference cache") for m in warnings), warnings
    assert "removed a half-written leftover: reference-valid.tmp.npz" in warnings
    starts = [e for e in events if e["type"] == "start"]
    assert starts[-1]["reference_cached"] is False and events[-1]["type"] == "done" and events[-1]["step"] == 3
    with np.load(cache) as f:  # rewritten, with the same numbers (CPU: deterministic)
        assert set(f.files) == set(before) and all(np.array_equal(f[k], before[k]) for k in before)
    assert not list(run_dir.glob("*tmp*"))


@pytest.mark.slow
def test_sigterm_during_the_reference_pass_stops_it_and_resume_finishes(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "kto", iters=2, save_every=2)
    proc = spawn(run_dir, env={"TUNEDECK_FAULT": "ref_sleep:0.5"})  # a pass of about 10 s
    try:
        wait_event(run_dir, lambda e: e["type"] == "reference" and e["done"] > 0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=STOP_LIMIT + 30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0 and elapsed < STOP_LIMIT, (code, elapsed, runs.tail_log(run_dir))
    events = runs.read_events(run_dir)
    last = events[-1]
    assert last["type"] == "stopped" and last["signal"] == "SIGTERM" and last["phase"] == "reference"
    assert last["checkpoint"] is None and "start" not in [e["type"] for e in events]
    assert events[-2]["type"] == "reference" and events[-2]["done"] < events[-2]["total"]
    assert runs.run_info(run_dir).status == "stopped" and not runs.is_locked(run_dir)
    assert not list(run_dir.glob("reference-*")) and not list(run_dir.glob(".reference-*"))
    assert Trainer(run_dir, resume=True).run() == 0
    events = runs.read_events(run_dir)
    assert events[-1]["type"] == "done" and events[-1]["step"] == 2
    assert [e for e in events if e["type"] == "start"][-1]["reference_cached"] is False
    assert runs.run_info(run_dir).status == "finished"
