"""A real full disk (a small tmpfs) under the commands that write results: nothing computed is lost unseen,
no partial file is left, and the message names the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, full_disk, make_run
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
