"""Model directories that ship code: never run implicitly, refused with an explanation on every loading path
(training, chat, eval, export, `data check --model`), accepted for training only with model.trust_remote_code."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, tiny_config
from tunedeck.core import config as C
from tunedeck.core import model as M

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def evil_model(tmp_path: Path, demo_model: Path) -> tuple[Path, Path]:
    """A copy of the demo model whose config and tokenizer point at code that leaves a marker if it runs."""
    d = tmp_path / "evil-model"
    shutil.copytree(demo_model, d, symlinks=True)
    marker = tmp_path / "PWNED"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (d / "modeling_evil.py").write_text(code + "from mlx_lm.models.llama import Model, ModelArgs\n")
    (d / "tokenization_evil.py").write_text(code + "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    tcfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return d, marker


def test_core_never_enables_remote_code_itself() -> None:
    pattern = re.compile(r"trust_remote_code\W{0,4}(=|:)\s*True")
    hits = [f"{p.relative_to(ROOT)}:{n}" for folder in ("core", "tui") for p in (ROOT / folder).rglob("*.py")
            for n, text in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(text)]
    assert hits == []
    assert C.Config().model.trust_remote_code is False
    assert C.preset("demo").model.trust_remote_code is False


@pytest.mark.parametrize("what", ["auto_map", "model_file", "python-file", "tokenizer-auto_map"])
def test_check_remote_code_names_what_it_found(tmp_path: Path, demo_model: Path, what: str) -> None:
    d = tmp_path / "m"
    shutil.copytree(demo_model, d, symlinks=True)
    if what == "python-file":
        (d / "custom.py").write_text("x = 1\n")
    else:
        name = "tokenizer_config.json" if what.startswith("tokenizer") else "config.json"
        cfg = json.loads((d / name).read_text())
        cfg[what.removeprefix("tokenizer-")] = {"AutoTokenizer": "x.Y"} if what.endswith("auto_map") else "x.py"
        (d / name).write_text(json.dumps(cfg))
    with pytest.raises(M.ModelError) as exc:
        M.check_remote_code(d, False)
    msg = str(exc.value)
    assert str(d) in msg and "never runs it implicitly" in msg and "model.trust_remote_code = true" in msg
    assert {"auto_map": "config.json: auto_map", "model_file": "config.json: model_file", "python-file": "custom.py",
            "tokenizer-auto_map": "tokenizer_config.json: auto_map"}[what] in msg
    M.check_remote_code(d, True)  # opted in


def _fake_run(tmp_path: Path, model_dir: Path) -> Path:
    """A run directory whose base model is `model_dir`, with an (unused) adapter."""
    run = tmp_path / "runs" / "20260101-000000-sft"
    (run / "adapters").mkdir(parents=True)
    cfg = C.preset("demo", str(tmp_path / "ws" / "data.jsonl"))
    cfg.model.path = str(model_dir)
    C.save(cfg, run / "config.toml")
    (run / "adapters" / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": 1, "base_model": str(model_dir),
         "lora_parameters": {"rank": 1, "scale": 1.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}}))
    import mlx.core as mx  # a well-formed adapter file: only the base model's custom code is wrong here

    mx.save_safetensors(str(run / "adapters" / "adapters.safetensors"), {"unused": mx.zeros((1,))})
    return run


def test_every_loading_path_refuses_custom_code(tmp_path: Path, evil_model) -> None:
    model_dir, marker = evil_model
    config = tiny_config(tmp_path / "ws", "sft")
    run = _fake_run(tmp_path, model_dir)
    calls = {
        "train": ("train", config, "--set", f"model.path={model_dir}"),
        "chat run": ("chat", run, "--prompt", "hi", "--max-tokens", "2"),
        "chat adapter": ("chat", "--adapter", run / "adapters", "--model", model_dir, "--prompt", "hi"),
        "chat fused": ("chat", model_dir, "--prompt", "hi"),
        "eval": ("eval", run, "--max-tokens", "0"),
        "export": ("export", run, "--fuse", tmp_path / "fused"),
        "data check --model": ("data", "check", tmp_path / "ws" / "data.jsonl", "--model", model_dir),
    }
    for name, args in calls.items():
        r = cli(*args)
        assert r.code == 1, (name, r.out, r.err)
        assert "ships custom code" in r.err and "trust_remote_code" in r.err, (name, r.err)
        assert "Traceback" not in r.err
    assert not marker.exists()
    assert not (tmp_path / "fused").exists() and not (tmp_path / "ws" / "runs").exists()


def test_model_given_by_hub_id_is_checked_after_download(tmp_path: Path, evil_model, monkeypatch) -> None:
    """A Hugging Face id resolves to a snapshot directory; chat checks that directory, not just local paths."""
    import mlx_lm.utils

    model_dir, marker = evil_model
    monkeypatch.setattr(mlx_lm.utils, "_download", lambda repo, *a, **k: model_dir)
    with pytest.raises(M.ModelError, match="ships custom code"):
        M.load_for_inference("someone/evil-model")
    assert not marker.exists()


def test_tokenizer_only_loaders_do_not_run_tokenizer_code(evil_model) -> None:
    """The app's tokenizer loader (Data screen) goes through transformers, whose default refuses remote code:
    the custom class is not imported (the standard fast tokenizer is used)."""
    from tunedeck.tui.app import load_tokenizer

    model_dir, marker = evil_model
    tok = load_tokenizer(str(model_dir), lambda _msg: None)
    assert tok.encode("hello")
    assert not marker.exists()


# ---------------------------------------------------------------- chat templates that hang or explode

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE = "{{ 'A' * 50000000000 }}"


def _with_template(tmp_path: Path, demo_model: Path, chat_template: str) -> Path:
    """A copy of the demo model whose tokenizer_config.json carries `chat_template` (and no chat_template.jinja)."""
    d = tmp_path / "hostile-template"
    shutil.copytree(demo_model, d, symlinks=True)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    tcfg["chat_template"] = chat_template
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return d


@pytest.mark.parametrize("chat_template", [
    HUGE, "{{ 9 ** 99999999 }}", "{{ 'x'|center(5000000000) }}", "{{ '{:>999999999}'.format(1) }}",
    "{% set s = 'a' * 1000000 %}{{ s|replace('', s) }}", "{% set s = 'a' * 1000000 %}{{ ([s] * 100000)|join }}",
    "{% set s = 'a' * 1000000 %}{% set l = [s,s,s,s,s,s,s,s,s,s] %}{% set l = [l,l,l,l,l,l,l,l,l,l] %}{{ l }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
])
def test_template_size_limit(tmp_path: Path, demo_model: Path, chat_template: str) -> None:
    from mlx_lm.utils import load_tokenizer

    from tunedeck.core import template as T

    tok = load_tokenizer(_with_template(tmp_path, demo_model, chat_template))
    with pytest.raises(T.TemplateLimitError) as exc:
        T.encode(tok, [{"role": "user", "content": "hi"}], "ok")
    assert str(exc.value).startswith(str(tmp_path / "hostile-template" / "tokenizer_config.json") + ": chat_template")
    assert f"more than {T.RENDER_CHARS:,} characters" in str(exc.value)


@pytest.mark.slow
def test_looping_template_is_stopped_in_time(tmp_path: Path, demo_model: Path) -> None:
    """The nested loop would run 10^10 iterations; each command stops at the time limit with the file named."""
    from tests.conftest import run_cli
    from tunedeck.core.template import RENDER_SECONDS

    model_dir = _with_template(tmp_path, demo_model, LOOP)
    config = tiny_config(tmp_path / "ws", "sft")
    calls = {
        "train": ("train", config, "--set", f"model.path={model_dir}"),
        "chat": ("chat", model_dir, "--prompt", "hi", "--max-tokens", "2"),
        "data check --model": ("data", "check", tmp_path / "ws" / "data.jsonl", "--model", model_dir),
    }
    for name, args in calls.items():
        r = run_cli(*map(str, args), timeout=120 + 3 * RENDER_SECONDS)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert str(model_dir / "tokenizer_config.json") in r.stderr, (name, r.stderr)
        assert f"ran longer than {RENDER_SECONDS:g} s" in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)


@pytest.mark.parametrize("name", ["demo", "mistral-v3"])
def test_bounded_rendering_equals_transformers(name: str, demo_model: Path, tmp_path: Path, sample_data: Path) -> None:
    """The bounded renderer gives apply_chat_template's ids for every sample example, both tokenizers."""
    from mlx_lm.utils import load_tokenizer

    from tunedeck.core import template as T
    from tunedeck.core.data import load

    if name == "mistral-v3":
        pytest.importorskip("mistral_common")
        tok = load_tokenizer(T.write_mistral_v3_tokenizer(tmp_path / "tok"))
    else:
        tok = load_tokenizer(demo_model)
    for ex in load(sample_data).examples:
        for messages, gen in ((ex.prompt, True), (ex.messages, False)):
            want = T._ids(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen))
            assert T._apply(tok, messages, gen) == want, ex.line


@pytest.mark.slow
async def test_the_token_view_reports_a_looping_template(tmp_path: Path, demo_model: Path, monkeypatch) -> None:
    """The app's tokenizer check stops the template at the limit and the token view says why; the app lives on."""
    from tests.tui.conftest import make_app, make_workspace, wait_for
    from tunedeck.core import template

    monkeypatch.setattr(template, "RENDER_SECONDS", 2.0)  # the same limit, reached sooner
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    model_dir = _with_template(tmp_path, demo_model, LOOP)
    app = make_app(make_workspace(tmp_path / "ws"))
    app.state.model = str(model_dir)
    app.state.config.model.path = str(model_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.query("#examples"), what="the Data screen")
        await pilot.press("t")
        await wait_for(pilot, lambda: app.model_status.state == "failed", 60, "the template check to fail")
        assert "tokenizer_config.json" in app.model_status.message and "longer than" in app.model_status.message
        await wait_for(pilot, lambda: "tokenizer_config.json" in str(app.screen.query_one("#token-summary").render()),
                       30, "the token view to name the template's file")
