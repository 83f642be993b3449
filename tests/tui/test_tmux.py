"""The real `tunedeck` console script in a real terminal (tmux): opens the sample data, quits with 0."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.conftest import wait_until as wait

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"), pytest.mark.slow]


def test_opens_the_sample_data_and_quits_with_status_0(tmp_path: Path) -> None:
    ws = tmp_path / "empty-workspace"
    ws.mkdir()
    status = tmp_path / "status"
    env = {"XDG_CACHE_HOME": tmp_path / "cache", "XDG_CONFIG_HOME": tmp_path / "config", "TERM": "xterm-256color",
           "COLORTERM": "truecolor", "PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1", "TUNEDECK_DEMO_PRETRAINED": "0"}
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


def test_quitting_while_the_token_view_loads_exits_cleanly(tmp_path: Path, demo_model: Path) -> None:
    """ctrl+q right after `t` (the tokenizer still loading in a worker thread) used to abort the process
    ("terminate called without an active exception", exit 134) during interpreter finalisation."""
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"], "XDG_CONFIG_HOME": tmp_path / "config",
           "TERM": "xterm-256color", "PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1", "TUNEDECK_DEMO_PRETRAINED": "0"}
    assignments = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    for attempt in range(3):
        # a server of its own each time: the last one's kill-server may still be shutting its socket down
        tmux = ["tmux", "-L", f"tunedeck-quit-{os.getpid()}-{attempt}", "-f", "/dev/null"]
        status = tmp_path / f"status{attempt}"
        # Textual draws on stderr, so it stays on the terminal; the pane lingers after the exit for reading
        command = (f"cd {shlex.quote(str(ws))} && env -i HOME={shlex.quote(str(tmp_path))} {assignments} "
                   f"{shlex.quote(str(BIN))}; echo $? > {shlex.quote(str(status))}; sleep 60")
        subprocess.run([*tmux, "new-session", "-d", "-s", "app", "-x", "100", "-y", "30", command], check=True)
        try:
            screen = lambda: subprocess.run([*tmux, "capture-pane", "-p", "-t", "app"],  # noqa: E731
                                            capture_output=True, text=True).stdout
            wait(lambda: "desirable" in screen(), 60, "the Data screen")
            subprocess.run([*tmux, "send-keys", "-t", "app", "t"], check=True)
            while not status.exists():  # at once, and again if the first ctrl+q landed before the view opened
                subprocess.run([*tmux, "send-keys", "-t", "app", "C-q"], capture_output=True)
                try:
                    wait(status.exists, 2, "the app to exit")
                except AssertionError:
                    continue
            wait(lambda: status.read_text().strip() != "", 10, "the exit status")
            after = screen()
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)
        assert status.read_text().strip() == "0", after
        assert "terminate called" not in after and "Traceback" not in after
