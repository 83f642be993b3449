"""Hostile and odd input to the config, dataset and settings readers (issue 18).

Integers past Python's 4,300-digit limit, nesting past the recursion limit, values the trainer's
backend cannot take, CR-only line endings, byte-order marks, files cut short, repeated JSON keys,
/proc files, FIFOs: each gets a message naming the file, line or key and exit 1 (or is accepted),
never a traceback, a hang or a run directory; the app starts over any of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tomli_w
from textual.worker import WorkerCancelled

from tests.conftest import small_dataset
from tests.reliability.conftest import cli, tiny_config, tree_bytes
from tunedeck.core import config as C
from tunedeck.core.settings import settings_path
from tunedeck.tui.app import TunedeckApp, initial_state
from tunedeck.tui.state import CONFIG_NAME

DEADLINE = 120.0  # seconds a reader may take before it counts as hung


def conv(i: int, label: object = True) -> dict:
    return {"conversations": [{"role": "user", "content": f"question {i}"},
                              {"role": "assistant", "content": f"answer {i}"}], "label": label}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


GOOD = b"".join(line(conv(i, i % 2 == 0)) for i in range(6))
BIG = "9" * 5000
DEEP_TOML = "deep = " + "[" * 5000 + "]" * 5000 + "\n"


@contextlib.contextmanager
def unblocked(fifo: Path, after: float = DEADLINE) -> Iterator[None]:
    """Yield; if a reader is still blocked on `fifo` after `after` seconds, open it for writing (the reader
    then sees end of file), so that a reader that waits on a FIFO fails the test instead of hanging it."""
    done = threading.Event()

    def release() -> None:
        if not done.wait(after):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    t = threading.Thread(target=release, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def timed_cli(*args: object) -> tuple[object, float]:
    start = time.monotonic()
    r = cli(*map(str, args))
    return r, time.monotonic() - start


# --- datasets: `data check` and `train` ------------------------------------------------------------


def jsonl(data: bytes, name: str = "data.jsonl") -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return write


DUP_ROLE = (b'{"conversations": [{"role": "user", "content": "q", "role": "system"}, '
            b'{"role": "assistant", "content": "a"}], "label": false}\n')

# (id, writer, substrings of data check's output and of train's stderr ("{p}" = the path))
DATA_CASES = [
    ("int-past-digit-limit", jsonl(GOOD + f'{{"id": {BIG}, "conversations": []}}\n'.encode()),
     ["{p}:7: invalid JSON: a number of 5,000 digits at column 8 (at most 4,300 are read)"]),
    ("int-past-digit-limit-in-a-list",
     jsonl(b'[{"text": "a"},\n {"text": "b", "n": ' + BIG.encode() + b"}]", name="data.json"),
     ["{p}:2: invalid JSON: a number of 5,000 digits at column 21"]),
    ("cr-only-line-endings", jsonl(GOOD.replace(b"\n", b"\r")),
     ["{p}:1: invalid JSON: Extra data at column", "the file uses CR (carriage return) line endings"]),
    ("duplicate-label", jsonl(GOOD + b'{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", '
                                     b'"content": "a"}], "label": true, "label": false}\n'),
     ['{p}:7: invalid JSON: duplicate key "label" in one object']),
    ("duplicate-role", jsonl(GOOD + DUP_ROLE), ['{p}:7: invalid JSON: duplicate key "role"']),
    ("duplicate-key-in-a-list", jsonl(b'[{"text": "a"}, {"text": "b", "text": "c"}]', name="data.json"),
     ['{p}:2: invalid JSON: duplicate key "text"']),
]


def _config_for(ws: Path, data_path: Path) -> Path:
    config = tiny_config(ws, "kto")
    cfg, _ = C.load(config)
    cfg.data.path = str(data_path)
    C.save(cfg, config)
    return config


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_odd_dataset(tmp_path: Path, case) -> None:
    _name, write, says = case
    d = tmp_path / "in"
    d.mkdir()
    path = write(d)
    before = tree_bytes(d)
    config = _config_for(tmp_path / "ws", path)
    with unblocked(path):
        r, took = timed_cli("data", "check", path)
        out = r.out + r.err
        assert r.code == 1 and "Traceback" not in out, out[-2000:]
        for s in says:
            assert s.replace("{p}", str(path)) in out, out[-2000:]
        r, took2 = timed_cli("train", config, "--quiet")
    assert max(took, took2) < DEADLINE
    assert r.code == 1 and "Traceback" not in r.err, r.err[-2000:]
    for s in says:
        assert s.replace("{p}", str(path)) in r.err, r.err[-2000:]
    assert "nothing was started" in r.err
    assert not (tmp_path / "ws" / "runs").exists()
    assert tree_bytes(d) == before


def test_proc_file_is_read_not_reported_empty() -> None:
    r = cli("data", "check", "/proc/self/status")  # st_size 0, yet full of text
    out = r.out + r.err
    assert r.code == 1 and "Traceback" not in out
    assert "/proc/self/status:1: invalid JSON" in out and "empty" not in out


# --- configs: `config check` and `train` ---------------------------------------------------------


def _tiny(ws: Path) -> Path:
    """A valid tiny SFT config over 16 sample lines."""
    return tiny_config(ws, "sft", n=16)


def _append(text: str) -> Callable[[Path], str]:
    return lambda config: config.read_text(encoding="utf-8") + text


def _replace(key: str, value: str) -> Callable[[Path], str]:
    """The config with `key` set to `value` (TOML text, written as it is)."""
    def edit(config: Path) -> str:
        section, name = key.split(".")
        raw = tomllib.loads(config.read_text(encoding="utf-8"))
        del raw[section][name]
        return tomli_w.dumps(raw).replace(f"[{section}]\n", f"[{section}]\n{name} = {value}\n", 1)
    return edit


def _cut_short(config: Path) -> str:
    return config.read_text(encoding="utf-8").rstrip("\n")[:-3]  # ends inside the last string


# (id, the config's new text from the valid one, substrings of config check's and train's stderr)
CONFIG_CASES = [
    ("deep-arrays", _append("[extra]\n" + DEEP_TOML), ["invalid TOML: arrays or inline tables nested too deeply"]),
    ("deep-inline-tables", _append("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n"),
     ["invalid TOML: arrays or inline tables nested too deeply"]),
    ("int-past-digit-limit", _replace("train.seed", BIG), ["invalid TOML: an integer of 5,000 digits", "column 8"]),
    ("seed-past-uint32", _replace("train.seed", "9223372036854775807"),
     ["train.seed: got 9223372036854775807; expected <= 4294967295 (the range is 0 to 4294967295)"]),
    ("iters-past-int64", _replace("train.iters", "99999999999999999999"),
     ["train.iters: got 99999999999999999999; expected <= 10000000"]),
    ("save-every-huge", _replace("train.save_every", "1000000000000000"),
     ["train.save_every: got 1000000000000000; expected <= 10000000"]),
    ("learning-rate-past-float", _replace("train.learning_rate", "1" + "0" * 400),
     ["train.learning_rate: got integer <an integer of about 401 digits>, too large for a 64-bit float"]),
    ("learning-rate-underflows", _replace("train.learning_rate", "1e-400"),
     ["train.learning_rate: got 1e-400, too small for a 64-bit float (it would read as 0)"]),
    ("learning-rate-denormal", _replace("train.learning_rate", "1e-310"),
     ["train.learning_rate: got 1e-310; expected 0 (the method's default) or 1e-12 to 1"]),
    ("num-layers-zero", _replace("lora.num_layers", "0"),
     ["lora.num_layers: got 0; expected -1 (every layer) or 1 to 4096"]),
    ("keys-embed-tokens", _replace("lora.keys", '["q_proj", "embed_tokens"]'),
     ["lora.keys: got 'embed_tokens'; not a linear layer of a transformer block; expected names among q_proj"]),
    ("cut-short", _cut_short, ["invalid TOML: Unterminated string at the end of the file (is it cut short?)"]),
]


def _check_refused(config: Path, says: list[str], *extra: str) -> None:
    ws = config.parent
    before = tree_bytes(ws)
    for args in (("config", "check", config, *extra), ("train", config, "--quiet", *extra)):
        r = cli(*map(str, args))
        assert r.code == 1 and "Traceback" not in r.err, r.err[-2000:]
        assert str(config) in r.err, r.err[-2000:]
        for s in says:
            assert s in r.err, r.err[-2000:]
    assert not (ws / "runs").exists()
    assert tree_bytes(ws) == before


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_odd_config(tmp_path: Path, case) -> None:
    _name, edit, says = case
    config = _tiny(tmp_path / "ws")
    config.write_text(edit(config), encoding="utf-8")
    _check_refused(config, says)


def test_cut_short_config_names_its_last_line(tmp_path: Path) -> None:
    config = _tiny(tmp_path / "ws")
    text = _cut_short(config)
    config.write_text(text, encoding="utf-8")
    last = text.splitlines()
    _check_refused(config, [f"(line {len(last)}, column {len(last[-1]) + 1})"])


@pytest.mark.parametrize("override", ["train.seed=" + "[" * 5000, "train.seed=18446744073709551616",
                                      "train.learning_rate=1e-400"], ids=["deep", "past-uint64", "underflow"])
def test_odd_set_override(tmp_path: Path, override: str) -> None:
    key = override.split("=")[0]
    _check_refused(_tiny(tmp_path / "ws"), [f"{key}: "], "--set", override)


def test_config_with_a_bom_is_accepted(tmp_path: Path) -> None:
    config = _tiny(tmp_path / "ws")
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    r = cli("config", "check", config)
    assert r.code == 0 and f"{config}: ok" in r.out, r.err


def test_fifos_are_refused_at_once(tmp_path: Path) -> None:
    """A FIFO given as the config or the dataset is refused without reading from it (a read would wait
    for a writer forever)."""
    config, data = tmp_path / "tunedeck.toml", tmp_path / "data.jsonl"
    os.mkfifo(config)
    with unblocked(config):
        r, took = timed_cli("config", "check", config)
    assert took < DEADLINE and r.code == 1 and "Traceback" not in r.err
    assert f"{config}: config: is not a regular file (a FIFO, socket or device); expected a TOML file" in r.err
    os.mkfifo(data)
    with unblocked(data):
        r, took = timed_cli("data", "check", data)
    assert took < DEADLINE and r.code == 1
    assert f"{data}:0: is not a regular file (a FIFO, socket or device)" in r.out


@pytest.mark.slow
def test_seed_range_ends_where_the_backend_does(tmp_path: Path) -> None:
    """One past train.seed's range is refused; its top trains (mx.random.seed of seed * 1_000_003 + m)."""
    config = tiny_config(tmp_path / "ws", "sft", iters=2, seed=C.MAX_SEED)
    r = cli("config", "check", config, "--set", f"train.seed={C.MAX_SEED + 1}")
    assert r.code == 1 and f"train.seed: got {C.MAX_SEED + 1}; expected <= {C.MAX_SEED}" in r.err, r.err
    r = cli("train", config, "--quiet", "--run-dir", tmp_path / "run")
    assert r.code == 0, r.err[-2000:]
    assert (tmp_path / "run" / "adapters" / "adapters.safetensors").is_file()


# --- the app: tunedeck.toml, the dataset and settings.toml at start ------------------------------------


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own settings.toml (not yet written)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = settings_path()
    path.parent.mkdir(parents=True)
    return path


def workspace(root: Path, data: bytes | None = None) -> Path:
    """A demo workspace over 16 sample lines (or `data`)."""
    root.mkdir(parents=True)
    if data is None:
        small_dataset(root / "data.jsonl", 16)
    else:
        (root / "data.jsonl").write_bytes(data)
    C.save(C.preset("demo", "data.jsonl"), root / CONFIG_NAME)
    return root


async def settle(app: TunedeckApp, pilot) -> None:
    for _ in range(2):
        with contextlib.suppress(WorkerCancelled):
            await app.workers.wait_for_complete()
        await pilot.pause()


def notes(app: TunedeckApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_app_starts_over_a_dataset_line_with_a_huge_integer(tmp_path: Path, xdg: Path) -> None:
    ws = workspace(tmp_path / "ws", GOOD + f'{{"n": {BIG}}}\n'.encode())
    app = TunedeckApp(initial_state(ws, None, None, None))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        ds = app.state.dataset
        assert app.is_running and ds is not None and len(ds.examples) == 6
        assert [(p.line, p.message[:38]) for p in ds.errors] == [(7, "invalid JSON: a number of 5,000 digits")]


async def test_app_starts_over_a_deeply_nested_config(tmp_path: Path, xdg: Path) -> None:
    ws = workspace(tmp_path / "ws")
    (ws / CONFIG_NAME).write_text((ws / CONFIG_NAME).read_text(encoding="utf-8") + "[extra]\n" + DEEP_TOML,
                                  encoding="utf-8")
    app = TunedeckApp(initial_state(ws, None, None, None))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("2")
        await settle(app, pilot)
        assert app.is_running
        assert "nested too deeply" in app.screen.query_one("#banner").render().plain


LIGHT = "theme = 'tunedeck-light'\n"
SETTINGS = {"nested": LIGHT + DEEP_TOML, "huge-int": LIGHT + f"x = {BIG}\n", "fifo": None}


@pytest.mark.parametrize("content", SETTINGS)
async def test_app_starts_over_an_odd_settings_file(tmp_path: Path, xdg: Path, content: str) -> None:
    """A settings.toml that cannot be used: a warning naming it, the default theme, the file untouched."""
    text = SETTINGS[content]
    if text is None:
        os.mkfifo(xdg)
    else:
        xdg.write_text(text, encoding="utf-8")
    with unblocked(xdg):
        start = time.monotonic()
        app = TunedeckApp(initial_state(workspace(tmp_path / "ws"), None, None, None))
        assert time.monotonic() - start < DEADLINE
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(app, pilot)
            assert app.is_running and app.theme == "tunedeck"
            assert any(str(xdg) in n and "using the default settings" in n for n in notes(app)), notes(app)
            app.theme = "tunedeck-contrast"
            await settle(app, pilot)
            assert any("Could not remember the theme" in n and "left as it is" in n for n in notes(app)), notes(app)
    assert xdg.is_fifo() if text is None else xdg.read_text(encoding="utf-8") == text


async def test_app_reads_a_settings_file_with_a_bom(tmp_path: Path, xdg: Path) -> None:
    xdg.write_text("\ufeff" + LIGHT, encoding="utf-8")
    app = TunedeckApp(initial_state(workspace(tmp_path / "ws"), None, None, None))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.theme == "tunedeck-light" and not notes(app)
