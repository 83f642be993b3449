"""Progress of the KTO reference pass: `reference` events from a real run, the CLI's progress line, the
Train screen's status line, bar and gauges, and a display that fails soft when its stream goes away."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest

from tests.reliability.conftest import tiny_config
from tunedeck.core import config as C
from tunedeck.core import runlock, runs
from tunedeck.core.progress import ProgressPrinter
from tunedeck.core.reference import REPORT_EVERY, Meter
from tunedeck.core.run_prep import prepare_run
from tunedeck.core.trainer import Trainer

REF = {"type": "reference", "step": 0, "time": 100.0, "done": 30, "total": 120, "rate": 10.0, "eta_s": 9.0,
       "rss_gb": 1.5, "mlx_active_gb": 0.5, "peak_memory_gb": 0.75, "sys_used_gb": 4.0, "sys_total_gb": 16.0}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Gone(io.StringIO):
    """A stream whose reader went away: every write fails with `err`."""

    def __init__(self, err: OSError) -> None:
        super().__init__()
        self.err = err
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise self.err


def test_progress_printer_shows_reference_progress() -> None:
    out = io.StringIO()
    p = ProgressPrinter(out)
    p(REF)
    p({**REF, "done": 120, "eta_s": 0.0})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[######                  ] reference pass 30/120 sequences 10.0 seq/s ETA 0m09s")
    assert "mem 0.75 GB" in lines[0]
    assert lines[1].startswith("[########################] reference pass 120/120")
    tty = Tty()
    p = ProgressPrinter(tty)
    p({**REF, "eta_s": None})  # no rate yet (the first event): ETA unknown
    p({"type": "start", "step": 0, "method": "kto", "train_examples": 8, "total_steps": 2})
    assert tty.getvalue().startswith("\r[######                  ] reference pass 30/120 sequences 10.0 seq/s ETA ?")
    assert "\x1b[K\nstart @ step 0: kto on 8 examples" in tty.getvalue()


@pytest.mark.parametrize("err", [BrokenPipeError(errno.EPIPE, "Broken pipe"), OSError(errno.EIO, "I/O error")],
                         ids=["EPIPE", "EIO"])
def test_progress_printer_goes_quiet_when_its_stream_is_gone(err: OSError) -> None:
    out = Gone(err)
    p = ProgressPrinter(out)
    p(REF)  # no exception: the display is disabled, training goes on
    assert not p.live
    p({"type": "step", "step": 1, "total_steps": 2, "loss": 0.5, "tokens_per_sec": 10.0})
    p.close()
    assert out.writes == 1


def test_printer_sends_what_follows_a_closed_pipe_to_the_fallback_file(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -3` has exited
    stream = os.fdopen(write_end, "w")
    log = tmp_path / "train.log"
    try:
        p = ProgressPrinter(stream, fallback=log)
        p(REF)
        assert not p.live
        stream.write("a traceback, later\n")  # whatever else writes to that stream lands in train.log
        stream.flush()
    finally:
        stream.close()
    # the line that failed (still buffered) and what came after it
    *_, failed, later = log.read_text().splitlines()
    assert "reference pass 30/120" in failed and later == "a traceback, later"


def test_meter_reports_the_first_the_last_and_every_few_seconds() -> None:
    now = [0.0]
    seen: list[tuple[int, int, float, float]] = []
    m = Meter(10, lambda *a: seen.append(a), clock=lambda: now[0])
    for _ in range(10):
        now[0] += REPORT_EVERY / 4  # a power of two: the clock adds up exactly
        m.add(1)
    assert [s[0] for s in seen] == [0, 4, 8, 10]
    assert seen[0][2:] == (0.0, pytest.approx(float("nan"), nan_ok=True))
    done, total, rate, eta = seen[1]
    assert total == 10 and rate == pytest.approx(4 / REPORT_EVERY) and eta == pytest.approx(6 / rate)


@pytest.mark.slow
def test_a_kto_run_reports_its_reference_pass(tmp_path: Path, demo_model: Path, monkeypatch) -> None:
    pause = 0.3  # per batch (test-only fault), so that the pass outlasts a few report intervals
    monkeypatch.setenv("TUNEDECK_FAULT", f"ref_sleep:{pause}")
    config = tiny_config(tmp_path, "kto", n=32, iters=2)  # 64 reference sequences in batches of 4
    cfg, _ = C.load(config)
    run_dir = prepare_run(cfg, config, tmp_path / "runs")
    assert Trainer(run_dir).run() == 0
    events = runs.read_events(run_dir)
    kinds = [e["type"] for e in events]
    ref = [e for e in events if e["type"] == "reference"]
    start = events[kinds.index("start")]
    assert ref and kinds.index("start") > kinds.index("reference") and kinds[-1] == "done"
    # the training and validation examples and their KL pairs
    total = 2 * (start["train_examples"] + start["valid_examples"])
    assert all(e["total"] == total for e in ref)
    dones = [e["done"] for e in ref]
    assert dones[0] == 0 and dones[-1] == total and dones == sorted(dones) and len(set(dones)) == len(dones)
    assert len(ref) >= 3  # the first, at least one on the clock, the last
    # throttled on the clock: REPORT_EVERY apart (event times are rounded to 1 ms), but the last
    gaps = [b["time"] - a["time"] for a, b in zip(ref, ref[1:])]
    assert min(gaps[:-1]) >= REPORT_EVERY - 0.002, gaps
    last = ref[-1]
    assert last["rate"] > 0 and last["eta_s"] == 0 and last["peak_memory_gb"] > 0 and last["rss_gb"] > 0
    assert start["reference_cached"] is False


@pytest.mark.slow
async def test_train_screen_shows_the_reference_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.tui.conftest import make_train_workspace, open_app, text_of, wait_for
    from tunedeck.tui.screens.train import TrainScreen

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    ws = make_train_workspace(tmp_path / "ws", method="kto")
    run_dir = ws / "runs" / "20260101-000000-kto"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text((ws / "tunedeck.toml").read_text())
    first = {**REF, "done": 0, "rate": 0.0, "eta_s": None, "time": 50.0}
    (run_dir / "events.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(REF) + "\n")
    lock = runlock.RunLock(run_dir)  # a live trainer, as far as the screen can tell
    lock.acquire()
    try:
        app = open_app(ws)
        async with app.run_test(size=(120, 40)) as pilot:
            app.state.active_run = run_dir
            await app.switch_mode("train")
            screen = app.screen
            assert isinstance(screen, TrainScreen)
            await wait_for(pilot, lambda: "30/120" in text_of(screen, "#status"), 120, "the reference progress")
            status = text_of(screen, "#status")
            assert "reference" in status and "10.0 seq/s" in status and "ETA 0m09s" in status
            bar = screen.query_one("#progress")
            assert (bar.total, bar.progress) == (120, 30)
            assert text_of(screen, "#gauge-rss .gauge-value").startswith("1.50 GB")
            assert text_of(screen, "#gauge-mlx-peak .gauge-value").startswith("0.75 GB")
            assert screen.history.started == 50.0 and "elapsed" in text_of(screen, "#stats")
            with open(run_dir / "events.jsonl", "a") as f:  # the pass ends, training starts
                f.write(json.dumps({"type": "start", "step": 0, "time": 120.0, "method": "kto", "total_steps": 6}) + "\n")
            await wait_for(pilot, lambda: screen.status == "running", 120, "the start event")
            await pilot.pause(0.4)
            assert "reference" not in text_of(screen, "#status") and text_of(screen, "#step") == "step 0/6"
            assert screen.history.started == 50.0  # the elapsed time counts the reference pass
    finally:
        lock.release()
