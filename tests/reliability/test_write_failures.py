"""Disk-full and I/O errors while saving checkpoints, adapters, configs and label edits; read-only run dirs.

Failures are injected in-process at the n-th matching call of `mx.save_safetensors`, `os.fsync` or
`os.replace`. Every time: the files saved before are byte-identical, the error names the file and the
reason, the run is marked failed (not corrupt), and no `*.tmp` is left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest

from tests.conftest import BIN, small_dataset
from tests.reliability.conftest import ENV, cli, make_run, tiny_config, tmp_leftovers, tree_bytes
from tunedeck.core import checkpoint_files, data, labels, runs
from tunedeck.core import config as C
from tunedeck.core.trainer import Trainer

pytestmark = pytest.mark.reliability

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EIO = OSError(errno.EIO, os.strerror(errno.EIO))
MLX_WRITE = RuntimeError("[write] Unable to write 8 bytes to file.")  # what MLX raises on a full disk


class Inject:
    """Make `owner.name` raise `error` at the n-th call whose path contains every string in `match`."""

    def __init__(self, monkeypatch, owner, name: str, match: tuple[str, ...], n: int, error: Exception,
                 path_of: Callable[..., str], before: Callable[[], None] = lambda: None) -> None:
        self.real = getattr(owner, name)
        self.match, self.n, self.error, self.path_of, self.before = match, n, error, path_of, before
        self.seen = 0
        self.fired = False
        monkeypatch.setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        path = self.path_of(*args)
        if not self.fired and all(m in path for m in self.match):
            self.seen += 1
            if self.seen == self.n:
                self.fired = True
                self.before()
                raise self.error
        return self.real(*args, **kwargs)


def _fd_path(fd, *_):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _inject(monkeypatch, where: str, match: tuple[str, ...], n: int, error: Exception, before) -> Inject:
    if where == "save_safetensors":
        return Inject(monkeypatch, mx, "save_safetensors", match, n, error, lambda f, *a: str(f), before)
    if where == "fsync":
        return Inject(monkeypatch, os, "fsync", match, n, error, _fd_path, before)
    return Inject(monkeypatch, os, "replace", match, n, error, lambda src, dst, *a: str(dst), before)


# (id, patched call, path must contain, n-th match, error, file named in the message, reason, newest checkpoint after)
CHECKPOINT_CASES = [
    ("optimizer-ENOSPC", "save_safetensors", ("step-000004", "optimizer"), 1, ENOSPC,
     "checkpoints/step-000004/optimizer.safetensors", "No space left on device", "step-000002"),
    ("adapter-weights-mlx-error", "save_safetensors", ("step-000004", "adapters.safetensors"), 1, MLX_WRITE,
     "checkpoints/step-000004/adapters.safetensors", "Unable to write", "step-000002"),
    ("fsync-EIO", "fsync", ("step-000004", "state.json"), 1, EIO,
     "checkpoints/step-000004", "Input/output error", "step-000002"),
    ("rename-ENOSPC", "replace", ("step-000004",), 1, ENOSPC,
     "checkpoints/step-000004", "No space left on device", "step-000002"),
    ("latest-ENOSPC", "replace", ("checkpoints/latest",), 2, ENOSPC,
     "checkpoints/latest", "No space left on device", "step-000004"),
    ("publish-ENOSPC", "replace", ("adapters/adapters.safetensors",), 2, ENOSPC,
     "adapters/adapters.safetensors", "No space left on device", "step-000004"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_checkpoint_write_failure_leaves_the_run_failed_not_corrupt(tmp_path: Path, monkeypatch, case) -> None:
    name, where, match, n, error, file, reason, newest = case
    run_dir = make_run(tmp_path, "sft", iters=4, save_every=2)
    saved: dict[str, bytes] = {}

    def snapshot() -> None:  # the committed state just before the failing write
        for sub in ("checkpoints/step-000002", "adapters"):
            saved.update({f"{sub}/{k}": v for k, v in tree_bytes(run_dir / sub).items() if not k.endswith(".tmp")})
        for f in ("checkpoints/latest", "config.toml"):
            saved[f] = (run_dir / f).read_bytes()

    inject = _inject(monkeypatch, where, match, n, error, snapshot)
    assert Trainer(run_dir).run() == 1
    assert inject.fired and saved
    monkeypatch.undo()

    last = runs.read_events(run_dir)[-1]
    assert last["type"] == "error" and last["kind"] == "io" and last["step"] == 4, last
    assert file in last["message"] and reason in last["message"], last["message"]
    assert "Earlier checkpoints are intact" in last["message"] and "MB free" in last["message"]
    assert {k: (run_dir / k).read_bytes() for k in saved} == saved  # nothing saved before was touched
    assert not tmp_leftovers(run_dir)
    assert checkpoint_files.latest_checkpoint(run_dir).name == newest
    info = runs.run_info(run_dir)
    assert info.status == "failed" and file in info.error
    if name == "optimizer-ENOSPC":  # space is back: the run resumes from its last good checkpoint and finishes
        assert Trainer(run_dir, resume=True).run() == 0
        events = runs.read_events(run_dir)
        assert events[-1]["type"] == "done"
        assert [e for e in events if e["type"] == "start"][-1]["resumed_from"] == "step-000002"
        assert runs.run_info(run_dir).status == "finished"


@pytest.mark.parametrize("where,n", [("replace", 1), ("fsync", 1)])
def test_config_save_failure_keeps_the_old_file(tmp_path: Path, monkeypatch, where: str, n: int) -> None:
    path = tmp_path / "tunedeck.toml"
    C.save(C.preset("demo", "data.jsonl"), path, comments=True)
    before = path.read_bytes()
    cfg = C.preset("demo", "other.jsonl")
    cfg.train.iters = 7
    _inject(monkeypatch, where, (str(tmp_path),), n, ENOSPC, lambda: None)
    with pytest.raises(OSError) as exc:
        C.save(cfg, path)
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tunedeck.toml"]


def test_cli_config_init_on_a_full_disk_says_so(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "tunedeck.toml"
    path.write_text("# mine\n")
    _inject(monkeypatch, "replace", (str(tmp_path),), 1, ENOSPC, lambda: None)
    r = cli("config", "init", path, "--force", "--preset", "demo")
    monkeypatch.undo()
    assert r.code == 1 and "No space left on device" in r.err and "Traceback" not in r.err
    assert path.read_text() == "# mine\n" and not tmp_leftovers(tmp_path)


@pytest.mark.parametrize("where,n", [("replace", 1), ("replace", 2), ("fsync", 2)],
                         ids=["backup-replace", "file-replace", "file-fsync"])
def test_label_save_failure_keeps_the_dataset(tmp_path: Path, monkeypatch, where: str, n: int) -> None:
    path = small_dataset(tmp_path / "data.jsonl", 8)
    before = path.read_bytes()
    ds = data.load(path)
    changes = {e.line: not e.label for e in ds.examples[:3]}
    match = (str(tmp_path), ".tmp") if where == "fsync" else (str(tmp_path),)  # fsync: files, not the dir
    _inject(monkeypatch, where, match, n, ENOSPC, lambda: None)
    with pytest.raises(OSError) as exc:
        labels.write_labels(path, changes, ds.sha256)
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not tmp_leftovers(tmp_path)
    for backup in tmp_path.glob("data.jsonl.bak-*"):  # a backup, if written, is a full copy
        assert backup.read_bytes() == before


def test_run_dir_below_a_file_is_refused(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    r = cli("train", config, "--run-dir", blocker / "run")
    assert r.code == 1 and "Traceback" not in r.err
    assert "not-a-dir" in r.err and "Not a directory" in r.err
    assert blocker.read_text() == "x"


def _read_only_cli(ro_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `tunedeck ARGS` where `ro_dir` is read-only: chmod for a normal user; for root (whom chmod does
    not stop) a read-only bind mount in a private mount namespace, gone when the command ends."""
    env = {**os.environ, **ENV}
    if os.geteuid() != 0:
        ro_dir.chmod(0o555)
        try:
            return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120, env=env)
        finally:
            ro_dir.chmod(0o755)
    if not shutil.which("unshare"):
        pytest.skip("running as root (chmod does not stop root) and `unshare` is missing for a read-only mount")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(ro_dir), str(BIN), *args],
                       capture_output=True, text=True, timeout=120, env=env)
    if "mount" in r.stderr and ("permission denied" in r.stderr.lower() or "not permitted" in r.stderr.lower()):
        pytest.skip(f"running as root and cannot make a read-only mount here: {r.stderr.strip()}")
    return r


@pytest.mark.slow
def test_read_only_run_dir_is_refused_up_front(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "a", "sft")
    before = tree_bytes(run_dir)
    r = _read_only_cli(run_dir, "train", "--resume", str(run_dir))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"run directory {run_dir} is not writable" in r.stderr, r.stderr
    assert tree_bytes(run_dir) == before

    config = tiny_config(tmp_path / "b")
    target = tmp_path / "b" / "ro"
    target.mkdir()
    r = _read_only_cli(target, "train", str(config), "--run-dir", str(target))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{target}" in r.stderr and ("not writable" in r.stderr or "Read-only" in r.stderr), r.stderr
    assert list(target.iterdir()) == []
