"""Damaged checkpoints and adapters under `train --resume`, and checkpoint retention (train.keep_checkpoints).

A damaged newest checkpoint (truncated file, flipped byte, bad manifest, a file where the directory
should be, a hand-made state.json) is moved aside as checkpoints/corrupt-step-N-<time>, named in a
`warning` event and in the CLI output, and the run resumes from the one before it and writes step N
again. Damaged files in adapters/ are republished from the resume checkpoint. Nothing ends in a
traceback. Each case copies one finished 4-step run (checkpoints at steps 2 and 4).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.reliability.conftest import cli, tiny_config, tmp_leftovers
from tunedeck.core import checkpoint_files, runs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

ITERS = 4


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Path:
    config = tiny_config(tmp_path_factory.mktemp("finished"), "sft", iters=ITERS, save_every=2)
    r = cli("train", str(config), "--quiet")
    assert r.code == 0, r.err
    run_dir = Path(r.out.strip().splitlines()[-1])
    assert [p.name for p in _steps(run_dir)] == ["step-000002", "step-000004"]
    return run_dir


def _steps(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))


def _copy(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest / run_dir.name))


def _content(path: Path) -> dict[str, bytes] | bytes:
    """A file's bytes, or a directory's files by name."""
    return path.read_bytes() if path.is_file() else {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _replace_with_file(ckpt: Path) -> None:
    shutil.rmtree(ckpt)
    ckpt.write_bytes(b"not a checkpoint\n")


DAMAGE = {
    "truncated": lambda ckpt: _truncate(ckpt / "optimizer.safetensors"),
    "flipped_byte": lambda ckpt: _flip_byte(ckpt / "adapters.safetensors"),
    "bad_manifest": lambda ckpt: (ckpt / "manifest.json").write_text('{"files": ', encoding="utf-8"),
    "file_not_dir": _replace_with_file,
}


def _last_start(run_dir: Path) -> tuple[dict, list[dict]]:
    """The last start event and the warnings written before it (since the previous start)."""
    events = runs.read_events(run_dir)
    starts = [i for i, e in enumerate(events) if e["type"] == "start"]
    before = events[starts[-2] + 1 if len(starts) > 1 else 0 : starts[-1]]
    return events[starts[-1]], [e for e in before if e["type"] == "warning"]


def _assert_finished(run_dir: Path) -> None:
    events = runs.read_events(run_dir)
    assert events[-1]["type"] == "done" and events[-1]["step"] == ITERS, events[-3:]
    newest = run_dir / "checkpoints" / f"step-{ITERS:06d}"
    assert checkpoint_files.verify_checkpoint(newest)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == newest.name
    assert not tmp_leftovers(run_dir)


def _weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors, read now (mx.load alone reads lazily)."""
    return {k: np.array(v) for k, v in mx.load(str(path)).items()}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_checkpoint_is_set_aside_and_resume_finishes(finished_run: Path, tmp_path: Path,
                                                                    damage: str) -> None:
    run_dir = _copy(finished_run, tmp_path)
    ckpt = run_dir / "checkpoints" / "step-000004"
    original = _weights(ckpt / "adapters.safetensors")
    DAMAGE[damage](ckpt)
    damaged = _content(ckpt)

    r = cli("train", "--resume", str(run_dir))
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    start, warnings = _last_start(run_dir)
    assert start["resumed_from"] == "step-000002"
    (aside,) = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("corrupt-step-000004-")]
    assert _content(aside) == damaged  # kept, byte for byte
    (warning,) = [w["message"] for w in warnings if "step-000004 is damaged" in w["message"]]
    assert f"moved aside to checkpoints/{aside.name}" in warning
    assert f"checkpoints/{aside.name}" in r.err  # the CLI shows the warning event
    _assert_finished(run_dir)
    # steps 3 and 4 again, from step 2: the same weights as the first time (resume is exact on CPU)
    again = _weights(ckpt / "adapters.safetensors")
    assert original.keys() == again.keys() and all(np.array_equal(original[k], again[k]) for k in original)


def test_hand_made_state_json_with_a_string_step_falls_back(finished_run: Path, tmp_path: Path) -> None:
    """The manifest matches (it was rewritten too), but "step" is a string: not resumable, set aside."""
    run_dir = _copy(finished_run, tmp_path)
    ckpt = run_dir / "checkpoints" / "step-000004"
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    (ckpt / "state.json").write_text(json.dumps({**state, "step": "4"}), encoding="utf-8")
    checkpoint_files.write_manifest(ckpt)
    assert checkpoint_files.verify_checkpoint(ckpt)

    r = cli("train", "--resume", str(run_dir), "--quiet")
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    start, warnings = _last_start(run_dir)
    assert start["resumed_from"] == "step-000002"
    assert any("state.json" in w["message"] and "'4'" in w["message"] for w in warnings), warnings
    assert any(p.name.startswith("corrupt-step-000004-") for p in (run_dir / "checkpoints").iterdir())
    _assert_finished(run_dir)


def test_every_checkpoint_damaged_starts_again_from_step_0(finished_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished_run, tmp_path)
    for ckpt in _steps(run_dir):
        _truncate(ckpt / "adapters.safetensors")

    r = cli("train", "--resume", str(run_dir), "--quiet")
    assert r.code == 0, r.err
    start, warnings = _last_start(run_dir)
    assert start["resumed_from"] is None and start["step"] == 0
    damaged = [w["message"] for w in warnings if "is damaged" in w["message"]]
    assert len(damaged) == 2 and all("training starts at step 0" in m for m in damaged), damaged
    aside = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("corrupt-"))
    assert [n[: len("corrupt-step-000002")] for n in aside] == ["corrupt-step-000002", "corrupt-step-000004"]
    _assert_finished(run_dir)


def test_unloadable_checkpoint_file_fails_naming_it(finished_run: Path, tmp_path: Path) -> None:
    """A garbage optimizer file whose manifest was rewritten to match: one message naming the file, exit 1."""
    run_dir = _copy(finished_run, tmp_path)
    ckpt = run_dir / "checkpoints" / "step-000004"
    (ckpt / "optimizer.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    checkpoint_files.write_manifest(ckpt)
    before = _content(ckpt)

    r = cli("train", "--resume", str(run_dir), "--quiet")
    assert r.code == 1
    assert "Traceback" not in r.err
    assert f"{ckpt / 'optimizer.safetensors'}" in r.err, r.err
    assert runs.read_events(run_dir)[-1]["type"] == "error"
    assert _content(ckpt) == before


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_config"])
def test_damaged_run_adapters_are_republished_on_resume(finished_run: Path, tmp_path: Path, damage: str,
                                                        demo_model: Path) -> None:
    import mlx_lm

    run_dir = _copy(finished_run, tmp_path)
    adapters, ckpt = run_dir / "adapters", run_dir / "checkpoints" / "step-000004"
    if damage == "truncated_weights":
        _truncate(adapters / "adapters.safetensors")
    else:
        (adapters / "adapter_config.json").write_text("garbage{", encoding="utf-8")

    r = cli("train", "--resume", str(run_dir))
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    _, warnings = _last_start(run_dir)
    assert any("republished from it" in w["message"] for w in warnings), warnings
    assert "republished" in r.err
    for name in ("adapters.safetensors", "adapter_config.json"):
        assert (adapters / name).read_bytes() == (ckpt / name).read_bytes()
    _assert_finished(run_dir)
    model, tok = mlx_lm.load(str(demo_model), adapter_path=str(adapters))
    assert isinstance(mlx_lm.generate(model, tok, prompt="hi", max_tokens=2), str)


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_keep_checkpoints_prunes_the_oldest(tmp_path: Path, demo_model: Path, keep: int) -> None:
    config = tiny_config(tmp_path, "sft", iters=8, save_every=2)
    r = cli("train", str(config), "--quiet", "--set", f"train.keep_checkpoints={keep}")
    assert r.code == 0, r.err
    run_dir = Path(r.out.strip().splitlines()[-1])
    every = [f"step-{s:06d}" for s in (2, 4, 6, 8)]
    kept = every[-keep:] if keep else every
    assert [p.name for p in _steps(run_dir)] == kept
    assert all(checkpoint_files.verify_checkpoint(p) for p in _steps(run_dir))
    pruned = [n for e in runs.read_events(run_dir) if e["type"] == "checkpoint" for n in e.get("pruned", [])]
    assert sorted(pruned) == sorted(set(every) - set(kept))
    assert not tmp_leftovers(run_dir)


def test_pruning_leaves_what_was_set_aside(finished_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished_run, tmp_path)
    _flip_byte(run_dir / "checkpoints" / "step-000004" / "optimizer.safetensors")

    r = cli("train", "--resume", str(run_dir), "--quiet", "--set", "train.keep_checkpoints=1")
    assert r.code == 0, r.err
    assert [p.name for p in _steps(run_dir)] == ["step-000004"]
    assert any(p.name.startswith("corrupt-step-000004-") for p in (run_dir / "checkpoints").iterdir())
    _assert_finished(run_dir)


def test_keep_checkpoints_is_a_checked_key(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "sft")
    assert cli("config", "check", str(config), "--set", "train.keep_checkpoints=5").code == 0
    r = cli("config", "check", str(config), "--set", "train.keep_checkpoints=-1")
    assert r.code == 1
    assert "train.keep_checkpoints: got -1; expected >= 0" in r.err and "Traceback" not in r.err
