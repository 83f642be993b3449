"""A real full disk (a small tmpfs) under the commands that write results: nothing computed is lost unseen,
no partial file is left, and the message names the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import ENV, cli, full_disk, make_run, wait_for
from tunedeck.core import runs
from tunedeck.core.trainer import Trainer

pytestmark = pytest.mark.slow


def test_eval_on_a_full_disk_prints_the_results_then_names_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path / "ws", "sft", iters=2, save_every=2)
    assert Trainer(run).run() == 0
    with full_disk(tmp_path / "disk", "8M") as disk:
        moved = tmp_path / "disk" / run.name
        shutil.copytree(run, moved)
        disk.fill()
        r = cli("eval", moved, "--max-examples", "4", "--max-tokens", "8", "--json")
        assert r.code == 1 and "Traceback" not in r.err
        report = json.loads(r.out)  # the whole report reached the user before the write failed
        assert report["examples"] == 4 and "metrics" in report
        assert f"{moved / 'eval.json'} could not be written" in r.err and "No space left" in r.err
        assert not (moved / "eval.json").exists() and not [p for p in moved.iterdir() if ".tmp" in p.name]


def _train(run: Path, log: Path, fault: str) -> subprocess.Popen:
    """`tunedeck train --resume RUN` as a user runs it, its stderr in `log` (kept off the full disk)."""
    env = {**os.environ, **ENV, "TUNEDECK_FAULT": fault}
    return subprocess.Popen([str(Path(sys.executable).with_name("tunedeck")), "train", "--resume", str(run)],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env)


def _strict_events(run: Path) -> list[dict]:
    """Every line of events.jsonl, each one whole strict JSON (a full disk must not leave a torn line)."""
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) for line in lines]


@pytest.mark.parametrize("method, fault, when", [
    # filled between two steps (no checkpoint to write): the next step event cannot be appended
    ("sft", "step_sleep:0.2", "step"),
    # filled while the KTO reference pass runs: its cache file cannot be written
    ("kto", "ref_sleep:0.2", "reference"),
], ids=["events-append", "reference-cache"])
def test_a_disk_that_fills_during_training_stops_it_with_a_message(tmp_path: Path, method, fault, when) -> None:
    with full_disk(tmp_path / "disk", "16M") as disk:
        run = make_run(tmp_path / "disk" / "ws", method, iters=40)
        log = tmp_path / "stderr.txt"
        proc = _train(run, log, fault)
        wait_for(lambda: proc.poll() is not None or any(e["type"] == when for e in runs.read_events(run)), 300,
                 f"a {when} event")
        assert proc.poll() is None, log.read_text()
        disk.fill()
        code = proc.wait(timeout=300)
        err = log.read_text()
        assert code == 1 and "Traceback" not in err, err
        assert "No space left on device" in err and f"in {run}" in err and "--resume" in err, err
        _strict_events(run)  # nothing torn
        assert not [p for p in run.rglob("*") if ".tmp" in p.name]
        disk.free()  # space is back: the same command finishes the run
        assert _train(run, log, fault="").wait(timeout=600) == 0, log.read_text()
        assert _strict_events(run)[-1]["type"] == "done"
