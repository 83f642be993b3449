"""Label saves never lose other writers' data: appenders, open writers, a second saver, links, backups.

Every other writer here is a real process (a Python one-liner or a small saver script); the dataset
is the first lines of the bundled sample data.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import small_dataset
from tests.reliability.conftest import tmp_leftovers
from tunedeck.core.fsutil import sha256_file
from tunedeck.core.labels import LabelConflict, write_labels

pytestmark = pytest.mark.reliability

DEADLINE = 120.0  # seconds for any reply from a helper process

APPENDER = """
import sys, time
for i in range(int(sys.argv[2])):
    with open(sys.argv[1], "a", encoding="utf-8") as f:
        f.write('{"text": "appended %d"}\\n' % i)
    time.sleep(0.002)  # pacing, so that saves interleave with the appends
"""

HOLDER = """
import sys
with open(sys.argv[1], sys.argv[2]) as f:
    print("ready", flush=True)
    sys.stdin.readline()
    if "a" in sys.argv[2]:
        f.write(b'{"text": "held"}\\n')
"""

SAVER = """
import hashlib, json, sys
from tunedeck.core.labels import LabelConflict, write_labels
path, line = sys.argv[1], int(sys.argv[2])
for command in sys.stdin:
    if command.strip() == "load":
        data = open(path, "rb").read()
        sha, label = hashlib.sha256(data).hexdigest(), json.loads(data.split(b"\\n")[line - 1])["label"]
        print("loaded", flush=True)
    else:
        try:
            write_labels(path, {line: not label}, sha)
            print("ok", flush=True)
        except LabelConflict:
            print("refused", flush=True)
"""


def _reply(proc: subprocess.Popen[str]) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    assert ready, "no reply from the helper process"
    line = proc.stdout.readline().strip()
    assert line, f"the helper process died: {proc.stderr.read()}"
    return line


def _python(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _dataset(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return small_dataset(path, 8)


def _label(path: Path, line: int) -> bool:
    return json.loads(path.read_bytes().split(b"\n")[line - 1])["label"]


def _append_from_another_process(path: Path, text: str) -> None:
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    subprocess.run([sys.executable, "-c", code, str(path), text], check=True, timeout=DEADLINE)


@pytest.mark.slow
def test_concurrent_appender_loses_nothing(tmp_path: Path) -> None:
    path = _dataset(tmp_path / "data.jsonl")
    n_before, appends = len(path.read_bytes().splitlines()), 1500
    label = _label(path, 1)
    proc = _python(APPENDER, str(path), str(appends))
    saved = refused = 0
    while proc.poll() is None:
        data = path.read_bytes()
        try:
            write_labels(path, {1: not label}, hashlib.sha256(data).hexdigest())
            saved, label = saved + 1, not label
        except LabelConflict:
            refused += 1
    assert proc.wait(DEADLINE) == 0, proc.stderr.read()
    lines = path.read_bytes().splitlines()
    assert len(lines) == n_before + appends, f"{saved} saves, {refused} refused"
    assert sorted(json.loads(x)["text"] for x in lines[n_before:]) == sorted(f"appended {i}" for i in range(appends))
    assert _label(path, 1) is label and saved + refused > 0
    assert not tmp_leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("after", [False, True], ids=["append-before-rename", "appends-around-rename"])
def test_append_at_the_rename_is_put_back(tmp_path: Path, monkeypatch, after: bool) -> None:
    """Another process appends just before the rename (and, in the second case, to the new file just
    after it): the save is refused and the original file, with every appended line, is back in place."""
    path = _dataset(tmp_path / "data.jsonl")
    before, inode, real_replace, fired = path.read_bytes(), path.stat().st_ino, os.replace, []

    def replace(src, dst, *args, **kwargs):
        if Path(dst) != path or fired:
            return real_replace(src, dst, *args, **kwargs)
        fired.append(dst)
        _append_from_another_process(path, '{"text": "before"}')
        real_replace(src, dst, *args, **kwargs)
        if after:
            _append_from_another_process(path, '{"text": "after"}')

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(LabelConflict, match="written to by another program"):
        write_labels(path, {1: not _label(path, 1)}, sha256_file(path))
    monkeypatch.undo()
    tail = b'{"text": "before"}\n' + (b'{"text": "after"}\n' if after else b"")
    assert fired and path.read_bytes() == before + tail and path.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]


@pytest.mark.slow
def test_two_concurrent_savers_never_both_succeed(tmp_path: Path) -> None:
    path = _dataset(tmp_path / "data.jsonl")
    savers = [_python(SAVER, str(path), str(line)) for line in (1, 2)]
    expected = {1: _label(path, 1), 2: _label(path, 2)}
    outcomes = []
    try:
        for _ in range(30):
            for p in savers:
                p.stdin.write("load\n")
                p.stdin.flush()
            assert [_reply(p) for p in savers] == ["loaded", "loaded"]
            for p in savers:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [_reply(p) for p in savers]
            outcomes.append(results)
            assert results != ["ok", "ok"], outcomes
            for line, result in zip((1, 2), results):
                expected[line] ^= result == "ok"
            assert {1: _label(path, 1), 2: _label(path, 2)} == expected, outcomes
    finally:
        for p in savers:
            p.stdin.close()
            p.wait(DEADLINE)
    assert ["ok"] in [[r for r in o if r == "ok"] for o in outcomes]  # saves did get through


@pytest.mark.slow
def test_a_process_holding_the_file_open_for_writing_is_detected(tmp_path: Path) -> None:
    path = _dataset(tmp_path / "data.jsonl")
    before = path.read_bytes()
    reader, writer = _python(HOLDER, str(path), "rb"), _python(HOLDER, str(path), "ab")
    try:
        assert _reply(reader) == _reply(writer) == "ready"
        with pytest.raises(LabelConflict) as exc:
            write_labels(path, {1: not _label(path, 1)}, sha256_file(path))
        message = str(exc.value)
        assert str(path) in message and f"pid {writer.pid} " in message and f"pid {reader.pid} " not in message
        assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]
    finally:
        writer.stdin.write("\n")
        writer.stdin.close()
    assert writer.wait(DEADLINE) == 0
    assert path.read_bytes() == before + b'{"text": "held"}\n'
    write_labels(path, {1: not _label(path, 1)}, sha256_file(path))  # the reader alone does not block a save
    reader.stdin.close()
    assert reader.wait(DEADLINE) == 0
    assert path.read_bytes().endswith(b'{"text": "held"}\n') and len(list(tmp_path.glob("data.jsonl.bak-*"))) == 1


def test_saving_through_a_symlink_writes_the_target(tmp_path: Path) -> None:
    real = _dataset(tmp_path / "real" / "data.jsonl")
    link = tmp_path / "ws" / "data.jsonl"
    link.parent.mkdir()
    link.symlink_to(Path("..") / "real" / "data.jsonl")
    before, label = real.read_bytes(), _label(real, 1)
    backup = write_labels(link, {1: not label}, sha256_file(link))
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert _label(real, 1) is (not label) and real.read_bytes().split(b"\n")[1:] == before.split(b"\n")[1:]
    assert backup.parent == real.parent.resolve() and backup.read_bytes() == before
    assert [p.name for p in link.parent.iterdir()] == ["data.jsonl"]


def test_hard_links_are_not_split(tmp_path: Path) -> None:
    path = _dataset(tmp_path / "data.jsonl")
    other = tmp_path / "other.jsonl"
    os.link(path, other)
    before, label, inode = path.read_bytes(), _label(path, 1), path.stat().st_ino
    backup = write_labels(path, {1: not label}, sha256_file(path))
    assert path.stat().st_ino == other.stat().st_ino == inode and path.stat().st_nlink == 2
    assert _label(other, 1) is (not label) and other.read_bytes() == path.read_bytes() != before
    assert backup.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data.jsonl", "other.jsonl", backup.name])


def test_backups_are_pruned_to_the_setting(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = _dataset(tmp_path / "ws" / "data.jsonl")
    mine = path.with_name("data.jsonl.bak-mine")
    mine.write_text("not a tunedeck backup")
    states = []

    def save() -> Path:  # each save flips another line, so that every backup differs
        states.append(path.read_bytes())
        line = len(states)
        return write_labels(path, {line: not _label(path, line)}, sha256_file(path))

    def backups() -> list[bytes]:
        return sorted(p.read_bytes() for p in path.parent.glob("data.jsonl.bak-2*"))

    for _ in range(7):
        last = save()
    assert backups() == sorted(states[-5:]) and last.read_bytes() == states[-1]  # the default keeps 5
    settings = tmp_path / "config" / "tunedeck" / "settings.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text('theme = "x"\n[labels]\nkeep_backups = 2\n')
    last = save()
    assert backups() == sorted(states[-2:]) and last.read_bytes() == states[-1]
    assert mine.read_text() == "not a tunedeck backup"


@pytest.mark.parametrize("value", ["0", '"5"', "true"])
def test_a_bad_keep_backups_setting_is_refused(tmp_path: Path, monkeypatch, value: str) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    settings = tmp_path / "config" / "tunedeck" / "settings.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text(f"[labels]\nkeep_backups = {value}\n")
    path = _dataset(tmp_path / "ws" / "data.jsonl")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"settings\.toml: labels\.keep_backups: expected an integer >= 1"):
        write_labels(path, {1: not _label(path, 1)}, sha256_file(path))
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["data.jsonl"]
