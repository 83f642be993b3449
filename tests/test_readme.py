"""README's commands, run the way a user types them.

The shell blocks of "The two commands" and "Your own data" are read from README.md and run line by line,
literally, through bash in a fresh environment (`env -i`, a new HOME) and, for "Your own data", in a new
working directory with relative paths, with `tunedeck` found on PATH where `./run.sh` linked it. Only the
model and the size of the run are substituted: the demo model for the Mistral id, and a short run (the
test edits my.toml right after `config init`). `runs/<id>` becomes the run that `train --detach` printed.
Full-screen lines (`./run.sh`, `tunedeck`) run in tmux and are quit with ctrl+q. `./run.sh test` is the
command running this suite, so it is the one line not run here. When README changes, this test follows it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import wait_until
from tunedeck.core import demo, runs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"
APP_LINES = {"./run.sh", "tunedeck"}  # full-screen: run in a terminal, then quit


def readme_block(heading: str) -> list[str]:
    """The command lines of the first ```bash block under the README heading that starts with `heading`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(rf"^## {re.escape(heading)}.*?(?=^## )", text, re.S | re.M)
    assert section, f"README has no section '## {heading}'"
    block = re.search(r"```bash\n(.*?)```", section.group(0), re.S)
    assert block, f"README's '{heading}' section has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def command_of(line: str) -> str:
    """The line without its trailing comment (bash would drop it too; we need it to classify the line)."""
    return " ".join(shlex.split(line, comments=True))


def user_env(home: Path) -> dict[str, str]:
    """A fresh login-like environment: a new HOME, the PATH the user's shell has, offline hub."""
    return {"HOME": str(home), "PATH": os.environ["PATH"], "TERM": "xterm-256color", "LANG": "C.UTF-8",
            "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"], "XDG_CONFIG_HOME": str(home / ".config"),
            "HF_HUB_OFFLINE": "1", "OPENBLAS_NUM_THREADS": "1",
            "TUNEDECK_DEMO_PRETRAINED": "0",  # as in the whole suite: "demo" never builds the pre-trained model
            # test-only pacing (core.trainer's fault hook): steps take 0.3 s, so the detached run is still
            # training when README's `tunedeck stop` line comes, however fast this machine is
            "TUNEDECK_FAULT": "step_sleep:0.3"}


def run_line(line: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "-c", line], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"`{line}` in {cwd} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stdout + r.stderr, f"`{line}` printed a traceback:\n{r.stderr[-3000:]}"
    return r


def run_app_line(line: str, cwd: Path, env: dict[str, str], ready: str, tmp: Path) -> None:
    """A full-screen command in tmux at 120x40: wait until `ready` is on screen, ctrl+q, exit status 0 and
    nothing printed after it (Textual draws on stderr, so errors would land on the terminal: the pane
    lingers after the exit so that it can be read)."""
    status = tmp / "app-status"
    status.unlink(missing_ok=True)
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (f"cd {shlex.quote(str(cwd))} && env -i {assignments} bash -c {shlex.quote(line)}; "
               f"echo $? > {status}; sleep 60")
    tmux = ["tmux", "-L", f"tunedeck-readme-{os.getpid()}", "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "app", "-x", "120", "-y", "40", command], check=True)
    try:
        screen = lambda: subprocess.run([*tmux, "capture-pane", "-p", "-t", "app"],  # noqa: E731
                                        capture_output=True, text=True).stdout
        wait_until(lambda: ready in screen(), 240, f"`{line}` to show {ready!r}")
        deadline = time.monotonic() + 60
        while not status.exists():  # ctrl+q, again every few seconds if the app was still starting
            assert time.monotonic() < deadline, f"`{line}` did not quit on ctrl+q; screen:\n{screen()}"
            subprocess.run([*tmux, "send-keys", "-t", "app", "C-q"], capture_output=True)
            try:
                wait_until(status.exists, 3, "the app to quit")
            except AssertionError:
                continue
        wait_until(lambda: status.read_text().strip() != "", 10, "the exit status")
        after = screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert status.read_text().strip() == "0", f"`{line}` exited {status.read_text()}:\n{after}"
    assert "Traceback" not in after and "terminate called" not in after, after


def shrink(config: Path, model: Path) -> None:
    """The substitution: the demo model for Mistral-7B, and a run short enough for a test."""
    cfg = tomllib.loads(config.read_text(encoding="utf-8"))
    assert cfg["model"]["path"] == MISTRAL  # what the README promises `config init` writes
    cfg["model"].update(path=str(model), quantize=0)
    cfg["data"].update(max_seq_len=256)
    cfg["lora"].update(rank=4)
    cfg["train"].update(iters=60, save_every=20, eval_every=30, eval_batches=1, warmup_steps=1)
    config.write_text(tomli_w.dumps(cfg), encoding="utf-8")


@pytest.fixture
def on_path() -> None:
    found = shutil.which("tunedeck", path=os.environ["PATH"])
    assert found, "`tunedeck` is not on PATH: ./run.sh links it there (README, 'The two commands')"
    assert Path(found).resolve().parent == Path(sys.executable).parent, \
        f"`tunedeck` on PATH is {Path(found).resolve()}, not this checkout's; run ./run.sh here"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_two_commands(tmp_path: Path, on_path: None) -> None:
    lines = readme_block("The two commands")
    assert [command_of(line) for line in lines] == ["./run.sh", "./run.sh test"]
    home = tmp_path / "home"
    home.mkdir()
    # `./run.sh test` is what runs this suite; `./run.sh` opens the app on the bundled demo
    run_app_line(lines[0], ROOT, user_env(home), "desirable 750", tmp_path)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_your_own_data_block_in_a_new_directory(tmp_path: Path, demo_model: Path, on_path: None) -> None:
    home, work = tmp_path / "home", tmp_path / "my project"
    home.mkdir()
    work.mkdir()
    sample = demo.sample_dataset().read_text(encoding="utf-8").splitlines(keepends=True)
    (work / "my_data.jsonl").write_text("".join(sample[:64]), encoding="utf-8")
    env = user_env(home)
    run_id = None
    for line in readme_block("Your own data"):
        cmd = command_of(line)
        if "<id>" in cmd:  # (a comment may mention runs/<id> too)
            assert run_id, f"`{line}` needs a run, and no earlier line started one"
            line = line.replace("runs/<id>", f"runs/{run_id}")
        line = line.replace(MISTRAL, str(demo_model))
        if cmd in APP_LINES:
            run_app_line(line, work, env, f"{run_id}" if run_id else "tunedeck", tmp_path)
            continue
        if cmd.startswith("tunedeck stop"):  # stop needs a live run: the one we started is still training
            wait_until(lambda: any(e["type"] == "step" for e in runs.read_events(work / "runs" / run_id)), 240,
                       "the detached run's first step")
        r = run_line(line, work, env)
        if cmd.startswith("tunedeck config init"):
            shrink(work / "my.toml", demo_model)
        if cmd.startswith("tunedeck train") and "--detach" in cmd:
            printed = Path(r.stdout.strip().splitlines()[-1])
            assert printed.parent == Path("runs") and (work / printed / "config.toml").is_file(), r.stdout
            run_id = printed.name
        if cmd.startswith("tunedeck train --resume"):
            assert runs.read_events(work / "runs" / run_id)[-1]["type"] == "done"
    assert run_id and (work / "fused" / "config.json").is_file()


def config_reference_rows() -> list[str]:
    """README's config table as the code defines it: every key in order, its default, its meaning and choices."""
    import dataclasses

    from tunedeck.core import config as C
    from tunedeck.core.config_help import HELP

    rows = []
    for section in dataclasses.fields(C.Config):
        for f in dataclasses.fields(getattr(C.Config(), section.name)):
            key = f"{section.name}.{f.name}"
            default = getattr(getattr(C.Config(), section.name), f.name)
            shown = ", ".join(default) if isinstance(default, list) else repr(default)
            meaning = HELP[key]
            if key in C.CHOICES:
                meaning += f" (one of {', '.join(str(c) for c in C.CHOICES[key])})"
            rows.append(f"| `{key}` | `{shown}` | {meaning} |")
    return rows


def test_the_config_reference_lists_every_key_as_the_code_has_it() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Config reference.*?(?=^## )", text, re.S | re.M).group(0)
    table = [line for line in section.splitlines() if line.startswith("| `")]
    assert table == config_reference_rows()
