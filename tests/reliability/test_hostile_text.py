"""Hostile text in datasets: markup, click actions, ANSI/OSC escapes, bidi and zero-width characters,
emoji, huge unbroken lines. The engine's outputs stay safe for a terminal (no raw control characters in
`data check`'s output) and its JSON stays strict JSON (events.jsonl, `data check --json`, `runs --json`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, make_run, no_control_chars
from tunedeck.core import config as C
from tunedeck.core import runs
from tunedeck.core.trainer import Trainer

pytestmark = pytest.mark.reliability

HOSTILE = {
    "rich-markup": "[bold red]alert[/bold red] [reverse]x[/]",
    "textual-click": "[@click=app.quit]press[/] [@click=app.bell]",
    "link-markup": "[link=file:///etc/passwd]open[/link]",
    "ansi-csi": "\x1b[31mred\x1b[0m\x1b[2J\x1b[H",
    "osc-title": "\x1b]0;pwned\x07",
    "osc8-link": "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "c1-csi": "\x9b31mred\x9b0m",
    "cr-backspace": "safe\r\x08\x08\x7foverwritten",
    "bidi-override": "abc\u202edcb\u202c \u2066iso\u2069",
    "zero-width": "a\u200bb\u200cc\u200dd\ufeffe",
    "emoji": "🔥 👩‍👩‍👧‍👦 🏳️‍🌈",
    "combining": "Z\u0337\u0322a\u0338l\u0335g\u0336o",
    "nul-escape": "nul\u0000inside",
    "10k-no-spaces": "x" * 10_000,
}


def conv(user: str, assistant: str, label: object = True) -> dict:
    return {"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            "label": label}


def _strict(text: str):
    def reject(token: str):
        raise ValueError(token)
    return json.loads(text, parse_constant=reject)


def _bad_lines(h: str) -> list[dict]:
    """Records that are wrong in a way whose message quotes the hostile string."""
    return [
        {"conversations": [{"role": h, "content": "x"}, {"role": "assistant", "content": "y"}], "label": True},
        {h: 1, "other": 2},  # unrecognised record: the keys are listed
        conv("q", "a", label=h),
        {"conversations": h, "label": True},
        {"conversations": [{"role": "user", "content": h}, {"role": "assistant", "content": "ok"}], "label": h[:50]},
    ]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_data_check_quotes_hostile_text_safely(tmp_path: Path, name: str) -> None:
    h = HOSTILE[name]
    path = tmp_path / "data.jsonl"
    records = [conv(h, h), conv("fine", h, False), conv(h, "fine")] + _bad_lines(h)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    before = path.read_bytes()

    r = cli("data", "check", path)
    assert r.code == 1 and "Traceback" not in r.err
    out = r.out + r.err
    assert no_control_chars(out), [ch for ch in out if not no_control_chars(ch)][:5]
    for n in range(4, 9):
        assert f"{path}:{n}:" in r.out
    assert f"{path}:{n + 1}:" not in r.out  # the three hostile-but-valid examples are fine

    r = cli("data", "check", path, "--json", "--lenient")
    report = _strict(r.out)
    assert r.code == 0 and report["total"] == 3 and len(report["errors"]) >= 5
    assert path.read_bytes() == before


@pytest.mark.slow
def test_training_on_hostile_text_keeps_events_strict_json(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "sft", iters=2, save_every=2)
    data = tmp_path / "hostile.jsonl"
    values = list(HOSTILE.values())
    records = [conv(a, b) for a, b in zip(values, values[1:] + values[:1])]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    cfg, _ = C.load(run_dir / "config.toml")
    cfg.data.path = str(data)
    C.save(cfg, run_dir / "config.toml")

    assert Trainer(run_dir).run() == 0
    raw = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [_strict(line) for line in raw]
    assert events[-1]["type"] == "done"

    # a bad dataset, trained on without the CLI's check (as the app does): the error event quotes it safely
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for h in values for r in _bad_lines(h)[:3]),
                   encoding="utf-8")
    run2 = make_run(tmp_path / "b", "sft")
    cfg.data.path = str(bad)
    C.save(cfg, run2 / "config.toml")
    assert Trainer(run2).run() == 1
    events = [_strict(line) for line in (run2 / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    error = events[-1]
    assert error["type"] == "error" and error["kind"] == "input"
    assert f"{bad}:1: conversations[0].role: unknown role" in error["message"]
    assert no_control_chars(error["message"])
    assert "Traceback" not in "\n".join(runs.tail_log(run2))

    r = cli("runs", tmp_path / "runs", "--json")
    assert r.code == 0 and _strict(r.out)[0]["status"] == "finished"
    r = cli("runs", tmp_path / "b" / "runs")
    assert r.code == 0 and "failed" in r.out and no_control_chars(r.out)


TERMINAL_ATTACKS = {
    "osc52-clipboard": "\x1b]52;c;cm0gLXJmIH4=\x07",
    "osc0-title": "\x1b]0;pwned\x07",
    "csi-clear": "\x1b[2J\x1b[H",
    "rlo": "txt.\u202eexe",
}


@pytest.mark.parametrize("name", list(TERMINAL_ATTACKS))
def test_every_cli_print_path_shows_hostile_text_literally(tmp_path: Path, demo_model: Path, name: str) -> None:
    """Untrusted text reaches the CLI's output from a model's config.json, run-directory names, event fields,
    config keys and section names, and file names: each is shown escaped, never sent to the terminal."""
    import shutil

    h = TERMINAL_ATTACKS[name]
    outputs = []

    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    cfg_json = json.loads((model / "config.json").read_text())
    cfg_json["model_type"] = f"llama{h}"
    (model / "config.json").write_text(json.dumps(cfg_json))
    run_dir = make_run(tmp_path / "m", "sft", iters=1)
    cfg, _ = C.load(run_dir / "config.toml")
    cfg.model.path = str(model)
    config = tmp_path / "m" / "hostile-model.toml"
    C.save(cfg, config)
    r = cli("train", config, "--quiet")
    assert r.code == 1
    outputs.append(r.err)

    runs_root = tmp_path / "r" / "runs"
    hostile_run = runs_root / f"20260101-000000-{h}"
    hostile_run.mkdir(parents=True)
    (hostile_run / "config.toml").write_text(C.preset("demo", "d.jsonl").to_toml(), encoding="utf-8")
    events = [{"type": "start", "step": 0, "time": 1.0, "method": f"sft{h}", "total_steps": 3},
              {"type": "error", "step": 0, "time": 2.0, "message": f"boom {h}"}]
    (hostile_run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    r = cli("runs", runs_root)
    assert r.code == 0 and "failed" in r.out
    outputs.append(r.out + r.err)

    toml = tmp_path / "keys.toml"
    escaped = json.dumps(h)  # a TOML basic string takes JSON's escapes
    toml.write_text(f"[train]\n{escaped} = 1\n[{escaped}]\nx = 2\n", encoding="utf-8")
    r = cli("config", "check", toml)
    assert r.code == 1
    outputs.append(r.err)

    data = tmp_path / f"data{h}.jsonl"
    data.write_text('{"conversations": 3}\n', encoding="utf-8")
    r = cli("data", "check", data)
    assert r.code == 1
    outputs.append(r.out + r.err)
    r = cli("data", "check", tmp_path / f"missing{h}.jsonl")
    assert r.code == 1
    outputs.append(r.err)

    for out in outputs:
        assert out.strip() and "Traceback" not in out
        assert no_control_chars(out), (name, out[:500])
    assert any("\\x1b" in out or "\\u202e" in out for out in outputs)  # shown, not dropped
