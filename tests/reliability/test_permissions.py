"""Files and directories that tunedeck writes get the modes the user's umask asks for (mkstemp and mkdtemp
alone would make every run file 0600 and every checkpoint 0700, unreadable to `mlx_lm.generate` run by
another user), and a replaced file keeps its mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tunedeck.core.fsutil import atomic_dir, atomic_write_text


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                         (0o002, 0o664, 0o775)])
def test_new_files_and_dirs_follow_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.toml", "x = 1\n")
        with atomic_dir(tmp_path / "step-000001") as d:
            atomic_write_text(d / "state.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.toml").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "step-000001").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "step-000001" / "state.json").stat().st_mode) == file_mode


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("a\n")
    path.chmod(0o640)
    atomic_write_text(path, "b\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "b\n"
