"""Malformed datasets, configs, model directories and event files through the CLI.

Each case: exit 1 (or 0 where the input is merely unusual), a message naming the place (PATH:LINE, the
config key, the model file) and the reason, never a traceback, never a changed input file; `tunedeck
train` refuses before it creates a run directory. The CLI runs in-process (fast); a few cases also
run through the real `tunedeck` executable.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli, small_dataset
from tests.reliability.conftest import cli, tiny_config, tree_bytes
from tunedeck.core import config as C
from tunedeck.core import events

pytestmark = pytest.mark.reliability


def conv(i: int, label: object = True, **extra: object) -> dict:
    return {"conversations": [{"role": "user", "content": f"question {i}"},
                              {"role": "assistant", "content": f"answer {i}"}], "label": label, **extra}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


GOOD = b"".join(line(conv(i, i % 2 == 0)) for i in range(6))


def jsonl(*parts: bytes, name: str = "data.jsonl") -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        (d / name).write_bytes(b"".join(parts))
        return d / name
    return write


def _dir(d: Path) -> Path:
    (d / "data.jsonl").mkdir()
    return d / "data.jsonl"


def _unreadable(d: Path) -> Path:
    p = jsonl(GOOD)(d)
    if os.geteuid() != 0:  # root reads anything: the test simulates the permission check instead
        p.chmod(0)
    return p


# (id, writer, method, data-check exit code, substrings of data check's output ("{p}" = the path),
#  substrings of `tunedeck train`'s stderr; None = the data is fine, train must get past it)
DATA_CASES = [
    ("truncated-last-line", jsonl(line(conv(0)), line(conv(1, False)), b'{"conversations": [{"role": "us'), "kto",
     1, ["{p}:3: invalid JSON"], ["{p}:3: invalid JSON"]),
    ("bom-and-bad-line", jsonl(b"\xef\xbb\xbf" + line(conv(0)), b"nope\n", line(conv(1, False))), "kto",
     1, ["{p}:1: warning: file starts with a UTF-8 byte-order mark", "{p}:2: invalid JSON"], ["{p}:2: invalid JSON"]),
    ("crlf-and-bad-role", jsonl(GOOD.replace(b"\n", b"\r\n"),
                                line({"conversations": [{"role": "robot", "content": "x"},
                                                        {"role": "assistant", "content": "y"}]})), "kto",
     1, ["{p}:7: conversations[0].role: unknown role 'robot'"], ["{p}:7: conversations[0].role: unknown role"]),
    ("nul-bytes", jsonl(line(conv(0)), b'{"conversations": "\x00"}\n'), "kto",
     1, ["{p}:2: contains a NUL byte"], ["{p}:2: contains a NUL byte"]),
    ("invalid-utf8", jsonl(line(conv(0)), b'{"conversations": "\xff\xfe"}\n'), "kto",
     1, ["{p}:2: invalid UTF-8 at byte 19"], ["{p}:2: invalid UTF-8"]),
    ("ten-mb-line", jsonl(line(conv(0)), b'{"text": "' + b"a" * (10 << 20) + b'"}\n', line(conv(1, False))), "kto",
     1, ["{p}:2: line is 10,485,773 bytes, over the 1 MB limit"], ["{p}:2: line is"]),
    ("array-line", jsonl(GOOD, b"[1, 2]\n"), "kto", 1, ["{p}:7: expected a JSON object, got an array"],
     ["{p}:7: expected a JSON object"]),
    ("scalar-line", jsonl(GOOD, b"42\n"), "kto", 1, ["{p}:7: expected a JSON object, got a number"], ["{p}:7:"]),
    ("null-line", jsonl(GOOD, b"null\n"), "kto", 1, ["{p}:7: expected a JSON object, got null"], ["{p}:7:"]),
    ("string-line", jsonl(GOOD, b'"hello"\n'), "kto", 1, ["{p}:7: expected a JSON object, got a string"], ["{p}:7:"]),
    ("missing-fields", jsonl(GOOD, line({"label": True})), "kto",
     1, ["{p}:7: unrecognised record", "found keys: label"], ["{p}:7: unrecognised record"]),
    ("content-wrong-type", jsonl(GOOD, line({"conversations": [{"role": "user", "content": 5},
                                                               {"role": "assistant", "content": "x"}]})), "kto",
     1, ["{p}:7: conversations[0].content: expected a string, got a number"], ["{p}:7: conversations[0].content"]),
    ("conversations-a-string", jsonl(GOOD, line({"conversations": "hello", "label": True})), "kto",
     1, ["{p}:7: conversations: expected a list of messages, got a string"], ["{p}:7: conversations"]),
    ("message-not-object", jsonl(GOOD, line({"conversations": ["hi", "there"], "label": True})), "kto",
     1, ["{p}:7: conversations[0]: expected an object with 'role' and 'content', got a string"], ["{p}:7:"]),
    ("empty-conversation", jsonl(GOOD, line({"conversations": [], "label": True})), "kto",
     1, ["{p}:7: conversations: empty conversation"], ["{p}:7: conversations: empty conversation"]),
    ("empty-content", jsonl(GOOD, line({"conversations": [{"role": "user", "content": "  "},
                                                          {"role": "assistant", "content": "x"}]})), "kto",
     1, ["{p}:7: conversations[0].content: empty"], ["{p}:7:"]),
    ("unknown-role", jsonl(GOOD, line({"conversations": [{"role": "wizard", "content": "a"},
                                                        {"role": "assistant", "content": "b"}]})), "kto",
     1, ["{p}:7: conversations[0].role: unknown role 'wizard'"], ["{p}:7:"]),
    ("not-ending-with-assistant", jsonl(GOOD, line({"conversations": [{"role": "user", "content": "a"}],
                                                    "label": True})), "kto",
     1, ["{p}:7: conversations[0].role: conversation must end with an assistant turn, not 'user'"], ["{p}:7:"]),
    ("label-bad-string", jsonl(GOOD, line(conv(9, "maybe"))), "kto",
     1, ['{p}:7: label: expected true or false, got "maybe"'], ["{p}:7: label"]),
    ("label-bad-int", jsonl(GOOD, line(conv(9, 2))), "kto", 1, ["{p}:7: label: expected true or false, got 2"],
     ["{p}:7: label"]),
    ("label-null", jsonl(GOOD, line(conv(9, None))), "kto", 1, ["{p}:7: label: expected true or false, got null"],
     ["{p}:7: label"]),
    ("structured-tool-calls", jsonl(GOOD, line({"messages": [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "tool_calls": [{"id": 1}]}]})),
     "kto", 1, ["{p}:7: mixed formats"], ["{p}:7: mixed formats"]),
    ("tool-calls-no-content", jsonl(line({"messages": [{"role": "user", "content": "a"},
                                                       {"role": "assistant", "tool_calls": [{"id": 1}]}]})), "sft",
     1, ["{p}:1: messages[1].tool_calls[0].name: missing", "{p}:1: messages[1].tool_calls[0].id: expected a non-empty"],
     ["{p}:1: messages[1].tool_calls[0]"]),
    ("mixed-formats", jsonl(GOOD, line({"text": "hello"})), "kto",
     1, ["{p}:7: mixed formats: this line is 'text' but the file is 'kto'"], ["{p}:7: mixed formats"]),
    ("sharegpt-unknown-from", jsonl(line({"conversations": [{"from": "martian", "value": "a"},
                                                            {"from": "gpt", "value": "b"}]})), "sft",
     1, ["{p}:1: conversations[0].from: unknown role 'martian'"], ["{p}:1:"]),
    ("text-empty", jsonl(line({"text": "hello"}), line({"text": ""})), "sft", 1, ["{p}:2: text: empty"],
     ["{p}:2: text: empty"]),
    ("prompt-list-empty", jsonl(line({"prompt": [], "completion": "x", "label": True})), "kto",
     1, ["{p}:1: prompt: empty prompt"], ["{p}:1: prompt"]),
    ("deeply-nested", jsonl(GOOD, b"[" * 100_000 + b"]" * 100_000 + b"\n"), "kto",
     1, ["{p}:7: invalid JSON: nested too deeply"], ["{p}:7: invalid JSON"]),
    ("lone-surrogate", jsonl(GOOD, b'{"conversations": [{"role": "user", "content": "\\ud800"}, '
                                   b'{"role": "assistant", "content": "x"}], "label": true}\n'), "kto",
     1, ["{p}:7: conversations[0].content: contains an unpaired surrogate '\\ud800'"], ["{p}:7:"]),
    ("json-list-invalid", jsonl(b'[{"text": "a"}, {', name="data.json"), "sft", 1, ["{p}:1: invalid JSON"],
     ["invalid JSON"]),
    ("json-list-of-scalars", jsonl(b"[1, 2]", name="data.json"), "sft",
     1, ["{p}:1: expected a JSON object, got a number", "{p}:2: expected a JSON object"], ["{p}:1:"]),
    ("only-blank-lines", jsonl(b"\n\n  \n"), "sft", 1, ["file has no records"], ["file has no records"]),
    ("zero-byte-file", jsonl(b""), "sft", 1, ["{p}:0: file is empty"], ["file is empty"]),
    ("directory", _dir, "sft", 1, ["is a directory, not a dataset file"], ["is a directory"]),
    ("missing-file", lambda d: d / "nope.jsonl", "sft", 1, ["file not found"], ["file not found"]),
    ("unreadable", _unreadable, "sft", 1, ["cannot be read (permission denied)"], ["permission denied"]),
    ("every-example-undesirable", jsonl(*(line(conv(i, False)) for i in range(6))), "sft",
     0, ["desirable    0 (0.0%)", "undesirable  6"], ["SFT trains on desirable examples only"]),
    ("every-example-desirable", jsonl(*(line(conv(i, True)) for i in range(6))), "kto",
     0, ["desirable    6 (100.0%)"], ["KTO needs both desirable and undesirable examples",
                                        'train.method = "sft"']),
    ("bom-only", jsonl(b"\xef\xbb\xbf" + GOOD), "kto", 0, ["{p}:1: warning: file starts with a UTF-8 byte-order"],
     None),
    ("crlf-only", jsonl(GOOD.replace(b"\n", b"\r\n")), "kto", 0, ["6 examples, format kto"], None),
    ("labels-coerced", jsonl(GOOD, line(conv(7, "TRUE")), line(conv(8, 0))), "kto",
     0, ["{p}:7: warning: label: 'TRUE' is a string", "{p}:8: warning: label: 0 is not a JSON boolean"], None),
]


def _config_for(ws: Path, data_path: Path, method: str, model: str | None = None) -> Path:
    config = tiny_config(ws, method)
    cfg, _ = C.load(config)
    cfg.data.path = str(data_path)
    if model:
        cfg.model.path = model
    C.save(cfg, config)
    return config


def _snapshot(path: Path) -> object:
    if path.is_dir():
        return tree_bytes(path)
    if not os.access(path, os.R_OK):
        return os.stat(path).st_mtime_ns if path.exists() else None
    return path.read_bytes()


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_dataset(tmp_path: Path, monkeypatch, case) -> None:
    name, write, method, check_code, check_says, train_says = case
    d = tmp_path / "in"
    d.mkdir()
    path = write(d)
    if name == "unreadable" and os.geteuid() == 0:  # root reads anything: simulate the permission check
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == path else real(p, mode, **k))
    before = _snapshot(path)

    r = cli("data", "check", path)
    out = r.out + r.err
    assert r.code == check_code, out[-2000:]
    assert "Traceback" not in out
    for s in check_says:
        assert s.replace("{p}", str(path)) in out, out[-2000:]

    ws = tmp_path / "ws"
    model = str(tmp_path / "no-such-model") if train_says is None else None
    config = _config_for(ws, path, method, model)
    r = cli("train", config, "--quiet")
    assert r.code == 1 and "Traceback" not in r.err, r.err[-2000:]
    if train_says is None:  # the data passed; the next check (the model) stopped it
        assert "model path" in r.err and "does not exist" in r.err and "error(s) in the dataset" not in r.err
    else:
        for s in train_says:
            assert s.replace("{p}", str(path)) in r.err, r.err[-2000:]
        assert "nothing was started" in r.err
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())
    assert _snapshot(path) == before


# --- configs and model directories -------------------------------------------------------------


def _model_copy(demo: Path, dest: Path, drop: tuple[str, ...] = (), config: dict | None = None,
                files: dict[str, str] | None = None) -> Path:
    dest.mkdir(parents=True)
    for f in demo.iterdir():
        if f.name in drop:
            continue
        if f.suffix == ".safetensors":
            (dest / f.name).symlink_to(f)
        else:
            shutil.copy(f, dest / f.name)
    if config:
        cfg = json.loads((dest / "config.json").read_text())
        cfg.update(config)
        (dest / "config.json").write_text(json.dumps(cfg))
    for name, text in (files or {}).items():
        (dest / name).write_text(text)
    return dest


def _toml(text: str, data: str = "") -> Callable[[Path, Path], tuple[Path, list[str]]]:
    """A config file: [data] (path, then `data`), [model] (the demo), then `text`."""
    def write(ws: Path, demo: Path) -> tuple[Path, list[str]]:
        small_dataset(ws / "data.jsonl", 16)
        p = ws / "tunedeck.toml"
        p.write_text(f'[data]\npath = "data.jsonl"\n{data}[model]\npath = "demo"\nquantize = 0\n{text}')
        return p, []
    return write


def _with(mutate: Callable[[C.Config, Path, Path], None], *extra: str):
    def write(ws: Path, demo: Path) -> tuple[Path, list[str]]:
        config = tiny_config(ws, "sft")
        cfg, _ = C.load(config)
        mutate(cfg, ws, demo)
        C.save(cfg, config)
        return config, list(extra)
    return write


def _raw(data: bytes, name: str = "tunedeck.toml"):
    def write(ws: Path, demo: Path) -> tuple[Path, list[str]]:
        (ws / name).write_bytes(data)
        return ws / name, []
    return write


def _config_dir(ws: Path, demo: Path) -> tuple[Path, list[str]]:
    (ws / "tunedeck.toml").mkdir()
    return ws / "tunedeck.toml", []


def _model(**kw):
    def mutate(cfg: C.Config, ws: Path, demo: Path) -> None:
        cfg.model.path = str(_model_copy(demo, ws / "model", **kw))
    return mutate


def _set(key: str, value: object):
    def mutate(cfg: C.Config, ws: Path, demo: Path) -> None:
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return mutate


def _model_file(cfg: C.Config, ws: Path, demo: Path) -> None:
    (ws / "weights.bin").write_text("x")
    cfg.model.path = str(ws / "weights.bin")


AUTO_MAP = {"auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}}

# (id, writer, `config check` exit code, substrings of train's (and, if it fails, config check's) stderr)
CONFIG_CASES = [
    ("invalid-toml", _toml("[train\niters = 3\n"), 1, ["invalid TOML", "line 6"]),
    ("unknown-key", _toml("[train]\nfoo = 1\n"), 1, ["train.foo: unknown key; [train] accepts method"]),
    ("unknown-section", _toml("[bogus]\nx = 1\n"), 1, ["bogus: unknown section"]),
    ("wrong-type", _toml('[train]\nbatch_size = "four"\n'), 1,
     ["train.batch_size: expected an integer, got string 'four'"]),
    ("negative-iters", _toml("[train]\niters = -5\n"), 1, ["train.iters: got -5; expected >= 1"]),
    ("zero-batch", _toml("[train]\nbatch_size = 0\n"), 1, ["train.batch_size: got 0; expected >= 1"]),
    ("zero-max-seq-len", _toml("", data="max_seq_len = 0\n"), 1, ["data.max_seq_len: got 0; expected >= 8"]),
    ("zero-lora-rank", _toml("[lora]\nrank = 0\n"), 1, ["lora.rank: got 0; expected >= 1"]),
    ("nan-learning-rate", _toml("[train]\nlearning_rate = nan\n"), 1,
     ["train.learning_rate: got nan; expected a finite number"]),
    ("inf-scale", _toml("[lora]\nscale = inf\n"), 1, ["lora.scale: got inf; expected a finite number"]),
    ("kto-batch-1", _toml('[train]\nmethod = "kto"\nbatch_size = 1\n'), 1,
     ["train.batch_size: got 1; KTO needs a micro-batch of at least 2"]),
    ("section-not-table", _raw(b'lora = 5\n[data]\npath = "data.jsonl"\n'), 1,
     ["lora: expected a table [lora], got integer 5"]),
    ("keys-a-string", _toml('[lora]\nkeys = "q_proj"\n'), 1, ["lora.keys: expected a list of strings"]),
    ("valid-fraction-too-big", _toml("", data="valid_fraction = 0.95\n"), 1,
     ["data.valid_fraction: got 0.95; expected <= 0.9"]),
    ("negative-kto-beta", _toml("[kto]\nbeta = -1.0\n"), 1, ["kto.beta: got -1.0; expected > 0.0"]),
    ("unknown-choice", _toml('[lora]\ntype = "qlora"\n'), 1, ["lora.type: got 'qlora'; expected one of 'lora', 'dora'"]),
    ("bad-set-override", _with(lambda c, w, d: None, "--set", "train.iters=abc"), 1,
     ["train.iters: --set expected an integer, got string 'abc'"]),
    ("config-is-directory", _config_dir, 1, ["is a directory; expected a TOML file"]),
    ("config-missing", lambda ws, demo: (ws / "nope.toml", []), 1, ["file not found"]),
    ("config-invalid-utf8", _raw(b"[train]\niters = 3 # \xff\xfe\n"), 1, ["cannot read"]),
    ("model-path-missing", _with(_set("model.path", "/nonexistent/model")), 0,
     ["model path /nonexistent/model does not exist"]),
    ("model-path-a-file", _with(_model_file), 0, ["weights.bin is a file; expected a model directory"]),
    ("model-without-tokenizer", _with(_model(drop=("tokenizer.json", "tokenizer_config.json"))), 0,
     ["has no tokenizer"]),
    ("model-without-config", _with(_model(drop=("config.json",))), 0, ["has no config.json"]),
    ("model-auto-map", _with(_model(config=AUTO_MAP)), 0,
     ["ships custom code (config.json: auto_map)", "model.trust_remote_code = true"]),
    ("model-python-file", _with(_model(files={"modeling_evil.py": "import os\nos.system('touch pwned')\n"})), 0,
     ["ships custom code (modeling_evil.py)", "never runs it implicitly"]),
    ("model-file-key", _with(_model(config={"model_file": "arch.py"})), 0, ["config.json: model_file"]),
    ("tokenizer-auto-map", _with(_model(files={"tokenizer_config.json": json.dumps(
        {"auto_map": {"AutoTokenizer": ["tok.EvilTokenizer", None]}})})), 0, ["tokenizer_config.json: auto_map"]),
    ("model-config-not-json", _with(_model(files={"config.json": "{not json"})), 0, ["config.json: cannot read it as JSON"]),
    ("data-path-missing", _with(_set("data.path", "/nonexistent/data.jsonl")), 0,
     ["/nonexistent/data.jsonl:0: file not found"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_or_model(tmp_path: Path, demo_model: Path, case) -> None:
    name, write, check_code, says = case
    ws = tmp_path / "ws"
    ws.mkdir()
    config, extra = write(ws, demo_model)
    before = tree_bytes(ws)

    r = cli("config", "check", config, *extra)
    assert r.code == check_code, r.err
    assert "Traceback" not in r.err
    if check_code:
        for s in says:
            assert s in r.err, r.err
        assert str(config) in r.err

    r = cli("train", config, "--quiet", *extra)
    assert r.code == 1, r.err
    assert "Traceback" not in r.err
    for s in says:
        assert s in r.err, r.err
    if check_code:
        assert str(config) in r.err
    assert not (ws / "runs").exists()
    assert tree_bytes(ws) == before
    assert not (Path.cwd() / "pwned").exists()


def test_remote_code_is_accepted_only_when_opted_in(tmp_path: Path, demo_model: Path) -> None:
    from tunedeck.core.run_prep import preflight

    config = tiny_config(tmp_path, "sft")
    cfg, _ = C.load(config)
    cfg.model.path = str(_model_copy(demo_model, tmp_path / "model", config=AUTO_MAP))
    cfg.model.trust_remote_code = True
    preflight(cfg, tmp_path)  # opted in: no objection


# --- event files -------------------------------------------------------------------------------


def _run_with_events(root: Path, body: bytes) -> Path:
    run_dir = root / "20260101-000000-sft"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(C.Config().to_toml())
    (run_dir / "events.jsonl").write_bytes(body)
    return run_dir


START = b'{"type": "start", "step": 0, "time": 1.0, "method": "sft", "total_steps": 10}\n'
STEP = b'{"type": "step", "step": 3, "time": 2.0, "loss": 1.5}\n'
EVENT_CASES = [
    ("garbage-lines", START + b"hello world\n{{{{\n" + STEP, "stale", 3),
    ("partial-last-line", START + STEP + b'{"type": "step", "step": 4, "lo', "stale", 3),
    ("one-mb-line", START + b'{"type": "step", "step": 9, "x": "' + b"a" * (1 << 20) + b'"}\n' + STEP, "stale", 3),
    ("non-dict-json", START + b'[1, 2]\n42\n"step"\nnull\ntrue\n' + STEP, "stale", 3),
    ("no-or-bad-type", START + b'{"step": 5}\n{"type": 5, "step": 6}\n{"type": null}\n' + STEP, "stale", 3),
    ("wrong-field-types", b'{"type": "start", "step": "x", "total_steps": "ten", "workers": "many", "method": 5}\n'
     + b'{"type": "step", "step": true, "loss": "low", "time": "now"}\n' + STEP, "stale", 3),
    ("non-finite-numbers", b'{"type": "start", "step": 0, "total_steps": 1e999, "workers": NaN}\n'
     + b'{"type": "step", "step": 3, "loss": NaN}\n{"type": "eval", "step": 3, "val_loss": Infinity}\n', "stale", 3),
    ("invalid-utf8-and-nul", START + b'\xff\xfe\x00garbage\n' + STEP, "stale", 3),
    ("deeply-nested", START + b"[" * 100_000 + b"]" * 100_000 + b"\n" + STEP, "stale", 3),
    ("huge-int", START + b'{"type": "step", "step": ' + b"9" * 400 + b', "loss": 1e308}\n', "stale", int("9" * 400)),
    ("error-then-garbage", START + STEP + b'{"type": "error", "step": 3, "message": ["not", "a", "string"]}\nxx',
     "failed", 3),
    ("empty-file", b"", "new", 0),
]


def _strict_json(text: str):
    def reject(token: str):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=reject)


@pytest.mark.parametrize("case", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_bad_event_file(tmp_path: Path, case) -> None:
    name, body, status, step = case
    run_dir = _run_with_events(tmp_path / "runs", body)
    r = cli("runs", tmp_path / "runs", "--json")
    assert r.code == 0 and "Traceback" not in r.err, r.err
    (info,) = _strict_json(r.out)
    assert info["status"] == status and info["step"] == step and info["run_dir"] == str(run_dir)
    r = cli("runs", tmp_path / "runs")
    assert r.code == 0 and "Traceback" not in r.err and status in r.out
    assert (run_dir / "events.jsonl").read_bytes() == body


def test_event_file_that_is_a_directory(tmp_path: Path) -> None:
    run_dir = _run_with_events(tmp_path / "runs", b"")
    (run_dir / "events.jsonl").unlink()
    (run_dir / "events.jsonl").mkdir()
    r = cli("runs", tmp_path / "runs", "--json")
    (info,) = _strict_json(r.out)
    assert r.code == 0 and info["status"] == "failed" and "events.jsonl is a directory" in info["error"]


# --- the same through the real executable --------------------------------------------------------


@pytest.mark.slow
def test_real_executable_never_shows_a_traceback(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(GOOD + b'{"conversations": "\x00"}\n' + b"[" * 100_000 + b"\n")
    r = run_cli("data", "check", str(data))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{data}:7: contains a NUL byte" in r.stdout and f"{data}:8: invalid JSON" in r.stdout
    config = _config_for(tmp_path / "ws", data, "kto")
    r = run_cli("train", str(config))
    assert r.returncode == 1 and "Traceback" not in r.stderr and f"{data}:7: contains a NUL byte" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    r = run_cli("train", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "invalid TOML" in r.stderr
    _run_with_events(tmp_path / "runs", START + b"\xff garbage\n[1]\n" + STEP + b'{"type": "st')
    r = run_cli("runs", str(tmp_path / "runs"), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr and _strict_json(r.stdout)[0]["step"] == 3


def test_case_count() -> None:
    total = len(DATA_CASES) + len(CONFIG_CASES) + len(EVENT_CASES) + 1
    print(f"\nmalformed-input cases: {len(DATA_CASES)} datasets, {len(CONFIG_CASES)} configs/models, "
          f"{len(EVENT_CASES) + 1} event files = {total}")
    assert total >= 30
    assert events.MAX_LINE == 1 << 20
