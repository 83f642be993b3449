"""The console script in real subprocesses: help, usage errors, config commands, import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli


def test_help_lists_subcommands() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("data check", "config init", "train", "demo-model"):
        assert word in r.stdout


@pytest.mark.parametrize("cmd", [["config", "init"], ["config", "check"], ["demo-model"], ["data", "check"]])
def test_every_subcommand_has_help(cmd: list[str]) -> None:
    r = run_cli(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: tunedeck" in r.stdout


def test_usage_error_exits_2_without_traceback() -> None:
    r = run_cli("config", "frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_config_init_and_check(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    assert run_cli("config", "init", str(path), "--preset", "demo").returncode == 0
    assert path.read_text().startswith("# tunedeck")
    r = run_cli("config", "init", str(path))
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run_cli("config", "check", str(path), "--set", "train.iters=7", "--json")
    assert r.returncode == 0 and '"iters": 7' in r.stdout


def test_a_config_without_its_data_says_so_at_init_and_check(tmp_path: Path) -> None:
    """`config init` without --data writes a placeholder data.path: init notes it, check warns (training would
    refuse to start), and both stop once the file exists beside the config."""
    path = tmp_path / "c.toml"
    r = run_cli("config", "init", str(path), "--preset", "demo")
    assert r.returncode == 0 and "data.path = data.jsonl is a placeholder" in r.stderr
    r = run_cli("config", "check", str(path))
    assert r.returncode == 0 and f"data.path data.jsonl: no such file ({tmp_path / 'data.jsonl'}" in r.stderr
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "completion": "b", "label": true}\n')
    assert "no such file" not in run_cli("config", "check", str(path)).stderr
    r = run_cli("config", "init", str(tmp_path / "d.toml"), "--preset", "demo")
    assert r.returncode == 0 and "placeholder" not in r.stderr


def test_wrong_config_prints_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[train]\nbatch_size = "x"\niters = 0\nfoo = 1\n[lora]\nrank = -3\n')
    r = run_cli("config", "check", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    for key in ("train.batch_size", "train.iters", "train.foo", "lora.rank"):
        assert f"{path}: {key}:" in r.stderr
    assert "4 problem(s)" in r.stderr


def test_missing_config_is_a_clean_error(tmp_path: Path) -> None:
    r = run_cli("config", "check", str(tmp_path / "none.toml"))
    assert r.returncode == 1 and "file not found" in r.stderr and "Traceback" not in r.stderr


def test_core_never_imports_textual_or_rich() -> None:
    code = (
        "import sys, pkgutil, importlib, tunedeck.core\n"
        "for m in pkgutil.iter_modules(tunedeck.core.__path__):\n"
        "    importlib.import_module('tunedeck.core.' + m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich') or m.startswith('tunedeck.tui')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr


def test_headless_commands_load_no_textual(sample_data: Path) -> None:
    """The console script's dispatcher lives in tui/, but a headless command never imports Textual or Rich."""
    code = (
        "import sys, os\n"
        "os.environ['TUNEDECK_REEXECED'] = '1'\n"
        "from tunedeck.tui import cli\n"
        f"code = cli.main(['data', 'check', {str(sample_data)!r}, '--json'])\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')]\n"
        "print(bad, file=sys.stderr); sys.exit(1 if bad or code else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_no_bare_top_level_packages_in_the_wheel(tmp_path: Path) -> None:
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("tunedeck-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tunedeck"}
    for sub in ("tui/cli/__init__.py", "core/worker.py", "tui/app.py", "themes/__init__.py", "sample_data/notes_tool_use.jsonl"):
        assert f"tunedeck/{sub}" in names
