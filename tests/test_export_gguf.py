"""`tunedeck export --gguf / --ollama`: GGUF files that llama.cpp loads, tokenizes and runs like the fused model.

llama.cpp (llama-cpp-python, installed by run.sh's set-up) is the outside oracle: every check reads the
written file back with it in this process, independently of the export's own check.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.gotemplate import render
from tests.test_export import make_run
from tunedeck.core import export
from tunedeck.core import gguf_export as G
from tunedeck.core.data import load
from tunedeck.core.template import render_chat

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "notes_tool_use.jsonl"
CONVERSATIONS = 100


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (README, Tests: "
                               f"{G.VERIFIER_INSTALL})")


@pytest.fixture(scope="module")
def v3_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo architecture with Mistral's real v3 SentencePiece tokenizer (from mistral-common)."""
    from tunedeck.core import demo

    return demo.build(tmp_path_factory.mktemp("v3") / "model", tokenizer="mistral-v3")


@pytest.fixture(scope="module")
def runs(demo_model: Path, v3_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ggufruns")
    (root / "demo").mkdir()
    (root / "v3").mkdir()
    return {"demo": make_run(root / "demo"), "mistral-v3": make_run(root / "v3", model=str(v3_model))}


def _conversations(n: int) -> list[list[dict[str, str]]]:
    return [ex.messages for ex in load(SAMPLE).examples[:n]]


def _hf(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.mark.parametrize("gguf_type", G.GGUF_TYPES)
@pytest.mark.parametrize("tokenizer", ["demo", "mistral-v3"])
def test_gguf_loads_tokenizes_and_runs_in_llama_cpp(runs: dict[str, Path], demo_model: Path, v3_model: Path,
                                                    tokenizer: str, gguf_type: str, tmp_path: Path) -> None:
    import mlx_lm

    llama_cpp = _llama_cpp()
    run, base = runs[tokenizer], demo_model if tokenizer == "demo" else v3_model
    out = tmp_path / "model.gguf"
    r = run_cli("export", str(run), "--gguf", str(out), "--gguf-type", gguf_type, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["verified"] and report["conversations"] == CONVERSATIONS
    assert "export: verified in llama.cpp: tokens identical on 100 conversations" in r.stderr
    assert report["tokenizer"] == ("gpt2" if tokenizer == "demo" else "llama")
    assert not list(tmp_path.glob(".*tmp*"))
    # (a) + (b): llama.cpp, in this process, tokenizes rendered conversations exactly as the HF tokenizer
    hf = _hf(base)
    vocab = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    texts = [render_chat(hf, c, add_generation_prompt=False) for c in _conversations(CONVERSATIONS)]
    for text in texts:
        want = hf(text, add_special_tokens=False)["input_ids"]
        assert vocab.tokenize(text.encode(), add_bos=False, special=True) == want, text
    assert vocab.token_bos() == hf.bos_token_id and vocab.token_eos() == hf.eos_token_id
    # (c): logits of the GGUF against mlx-lm's own base + adapter, float32
    ref_model, _ = mlx_lm.load(str(base), adapter_path=str(run / "adapters"))
    ref_model.set_dtype(mx.float32)
    model = llama_cpp.Llama(str(out), n_ctx=128, n_batch=128, logits_all=True, verbose=False)
    weights = export._fused_weights(export.load_run_model(run))[1]
    for text in texts[:3]:
        ids = hf(text, add_special_tokens=False)["input_ids"][:96]
        want = np.array(ref_model(mx.array([ids]))[0])
        model.reset()
        model.eval(ids)
        got = np.array(model.scores[: len(ids)])
        tol = G.tolerance(gguf_type, weights, 4, want)
        assert np.abs(got - want).max() <= tol, (np.abs(got - want).max(), tol)
    if gguf_type == "f16":  # f16 is fine enough to tell the adapter apart: the base is beyond the tolerance
        base_model, _ = mlx_lm.load(str(base))
        base_model.set_dtype(mx.float32)
        assert np.abs(np.array(base_model(mx.array([ids]))[0]) - want).max() > 3 * tol


def test_gguf_that_fails_its_check_is_not_kept(runs: dict[str, Path], tmp_path: Path) -> None:
    _llama_cpp()
    out = tmp_path / "model.gguf"
    r = run_cli("export", str(runs["demo"]), "--gguf", str(out), "--tolerance", "-1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert re.search(r"verification failed: llama\.cpp's logits differ from the fused model's by up to .*"
                     r"nothing written to", r.stderr), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_gguf_check_catches_a_wrong_tokenizer(runs: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF that declares llama.cpp's default space prefix (what mlx-lm's writer leaves) fails the token check."""
    _llama_cpp()
    spm = G.spm_vocab

    def with_space_prefix(*args, **kwargs):
        vocab = spm(*args, **kwargs)
        vocab.add_space_prefix = True
        return vocab

    monkeypatch.setattr(G, "spm_vocab", with_space_prefix)
    out = tmp_path / "model.gguf"
    with pytest.raises(export.ExportError, match=r"llama\.cpp tokenizes \d+ of 100 rendered conversations "
                                                 r"differently"):
        export.export_gguf(runs["mistral-v3"], out)
    assert list(tmp_path.iterdir()) == []


def test_gguf_without_llama_cpp_says_unverified(runs: dict[str, Path], tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['llama_cpp'] = None\n")
    out = tmp_path / "model.gguf"
    r = run_cli("export", str(runs["demo"]), "--gguf", str(out), env={"PYTHONPATH": str(hide)})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "unverified" in ln]
    assert len(lines) == 1 and "llama-cpp-python is not installed" in lines[0] and "pip install" in lines[0]
    assert out.is_file()
    import gguf

    fields = gguf.GGUFReader(str(out)).fields
    assert fields["tokenizer.ggml.token_type"].types[-1] == gguf.GGUFValueType.INT32
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(fields["tokenizer.ggml.merges"].data) > 0 and "tokenizer.chat_template" in fields


def test_gguf_refuses_unsupported_architectures(runs: dict[str, Path], demo_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "qwen"
    shutil.copytree(demo_model, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    r = run_cli("export", str(runs["demo"]), "--gguf", str(tmp_path / "x.gguf"), "--model", str(other))
    assert r.returncode == 1 and "llama, mistral" in r.stderr and "'qwen2'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.gguf").exists()
    r = run_cli("export", str(runs["demo"]), "--gguf", str(tmp_path / "model.bin"))
    assert r.returncode == 1 and "must end in .gguf" in r.stderr


def _ollama_render(template: str, messages: list[dict[str, str]]) -> str:
    """What Ollama passes its template: .System (system messages joined by a blank line) and .Messages."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return render(template, {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]}
                                                            for m in messages]})


def _modelfile(path: Path) -> tuple[str, dict[str, list[str]]]:
    text = path.read_text(encoding="utf-8")
    m = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    assert m, text
    params: dict[str, list[str]] = {}
    for line in text[: m.start()].splitlines() + text[m.end():].splitlines():
        if line.strip():
            key, _, value = line.partition(" ")
            params.setdefault(key, []).append(value)
    return m.group(1), params


@pytest.mark.parametrize("tokenizer", ["demo", "mistral-v3"])
def test_ollama_modelfile_renders_like_the_hf_template(runs: dict[str, Path], demo_model: Path, v3_model: Path,
                                                       tokenizer: str, tmp_path: Path) -> None:
    out = tmp_path / "ollama"
    r = run_cli("export", str(runs[tokenizer]), "--ollama", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    template, params = _modelfile(out / "Modelfile")
    assert params["FROM"] == ["./model.gguf"]
    assert '"</s>"' in params["PARAMETER"][0] and any(p.startswith("num_ctx ") for p in params["PARAMETER"])
    hf = _hf(demo_model if tokenizer == "demo" else v3_model)
    bos = hf.bos_token if hf("a")["input_ids"][:1] == [hf.bos_token_id] else ""  # Ollama adds it then
    for ex in load(SAMPLE).examples:
        assert bos + _ollama_render(template, ex.messages) == render_chat(hf, ex.messages, False)
        assert bos + _ollama_render(template, ex.prompt) == render_chat(hf, ex.prompt, True)


@pytest.mark.parametrize("answer", ["sprouted, ", "café  ", "   ", "", "a b", "ends in é", "tab\\t "])
def test_ollama_template_cuts_trailing_spaces_as_the_hf_template(demo_model: Path, answer: str) -> None:
    """The Go template cuts an answer's trailing spaces (only spaces, byte-wise, never inside a character) as the
    HF template's rstrip(' ') does."""
    from tunedeck.core import ollama

    hf = _hf(demo_model)
    template = ollama.template_for(hf, add_bos=False)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer.replace("\\t", "\t")}]
    assert _ollama_render(template, messages) == render_chat(hf, messages, False)
