"""The real `tunedeck` console script in a real terminal (tmux): opens the sample data, quits with 0."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, wait_until as wait

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")




def test_opens_the_sample_data_and_quits_with_status_0(tmp_path: Path) -> None:
    ws = tmp_path / "empty-workspace"
    ws.mkdir()
    status = tmp_path / "status"
    env = {"XDG_CACHE_HOME": tmp_path / "cache", "XDG_CONFIG_HOME": tmp_path / "config", "TERM": "xterm-256color",
           "COLORTERM": "truecolor", "PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1"}
    assignments = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    command = (f"cd {shlex.quote(str(ws))} && env -i HOME={shlex.quote(str(tmp_path))} {assignments} "
               f"{shlex.quote(str(BIN))}; echo $? > {shlex.quote(str(status))}")
    tmux = ["tmux", "-L", f"tunedeck-shell-{os.getpid()}", "-f", "/dev/null"]

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "app"], capture_output=True, text=True).stdout

    subprocess.run([*tmux, "new-session", "-d", "-s", "app", "-x", "100", "-y", "30", command], check=True)
    try:
        wait(lambda: "750" in screen() and "250" in screen(), 60, "the split counts of the sample data")
        text = screen()
        assert "desirable 750 (75.0%)" in text and "undesirable 250 (25.0%)" in text
        subprocess.run([*tmux, "send-keys", "-t", "app", "C-q"], check=True)
        wait(status.exists, 30, "the app to exit")
        assert status.read_text().strip() == "0"
        assert not (tmp_path / "cache" / "tunedeck" / "demo-model").exists()  # browsing needs no model
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
