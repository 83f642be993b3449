"""core.chat for real on the demo model: resolving what to load, streaming, base vs adapter; the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tunedeck.core import chat
from tunedeck.core.config import preset, save
from tunedeck.core.demo import sample_dataset

pytestmark = pytest.mark.slow
HI = [{"role": "user", "content": "hi"}]


def make_adapter_run(root: Path, name: str = "20260101-000000-sft") -> Path:
    """A run directory with a non-trivial adapter (random LoRA B) and one checkpoint, without training."""
    import mlx.core as mx
    from mlx_lm.tuner.lora import LoRALinear

    from tunedeck.core.checkpoint_files import mark_latest, write_manifest
    from tunedeck.core.model import load_for_training, write_adapters

    cfg = preset("demo", str(sample_dataset()))
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    save(cfg, run_dir / "config.toml")
    loaded = load_for_training(cfg.model, cfg.lora, "float32")
    mx.random.seed(1)
    for _, module in loaded.model.named_modules():
        if isinstance(module, LoRALinear):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.5
    for dest in (run_dir / "adapters", run_dir / "checkpoints" / "step-000001"):
        dest.mkdir(parents=True)
        write_adapters(loaded.model, loaded.adapter_config, dest)
    write_manifest(run_dir / "checkpoints" / "step-000001")
    mark_latest(run_dir, run_dir / "checkpoints" / "step-000001")
    return run_dir


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Path:
    return make_adapter_run(tmp_path_factory.mktemp("chat"))


def test_resolve_target(adapter_run: Path, demo_model: Path, tmp_path: Path) -> None:
    assert chat.resolve_target(adapter_run) == ("demo", adapter_run / "adapters")
    ckpt = adapter_run / "checkpoints" / "step-000001"
    assert chat.resolve_target(ckpt) == ("demo", ckpt)
    assert chat.resolve_target(ckpt, "other/model") == ("other/model", ckpt)
    loose = tmp_path / "loose"
    shutil.copytree(adapter_run / "adapters", loose)
    assert chat.resolve_target(loose) == (str(demo_model), loose)  # the adapter's base_model
    assert chat.resolve_target(demo_model) == (str(demo_model), None)  # a full (fused) model
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    shutil.copy(adapter_run / "config.toml", empty_run)
    for bad, why in [(empty_run, "no adapters yet"), (tmp_path / "nope", "not a directory"),
                     (tmp_path, "not a run, checkpoint, adapter or model")]:
        with pytest.raises(chat.ChatError, match=why):
            chat.resolve_target(bad)


def test_stream_reply_with_and_without_the_adapter(adapter_run: Path, demo_model: Path) -> None:
    cm = chat.load_chat_model(*chat.resolve_target(adapter_run))

    def greedy(adapter: bool) -> tuple[str, list[chat.Chunk]]:
        chunks = list(cm.reply(HI, adapter=adapter, max_tokens=8, temperature=0.0))
        return "".join(c.text for c in chunks), chunks

    tuned, chunks = greedy(True)
    assert chunks[-1].finish_reason in ("stop", "length") and all(c.tokens_per_sec > 0 for c in chunks)
    assert len(chunks) <= 8
    base, _ = greedy(False)
    assert base != tuned
    assert greedy(True)[0] == tuned  # the adapter is back after the base reply
    plain = chat.load_chat_model(str(demo_model), None)
    assert "".join(c.text for c in chat.stream_reply(plain.model, plain.tokenizer, HI, 8, 0.0)) == base


def test_visible_escapes_control_characters() -> None:
    from tunedeck.core.text import visible

    assert visible("a\x1b[31mb\rc\u202ed\n\te") == "a\\x1b[31mb\\rc\\u202ed\n\te"
    assert visible("[bold]ok[/bold] ünï") == "[bold]ok[/bold] ünï"


def test_cli_chat_compare(adapter_run: Path) -> None:
    r = run_cli("chat", str(adapter_run), "--prompt", "hi", "--max-tokens", "8", "--compare", timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.index("=== base (adapter off) ===") < out.index("=== adapter ===")
    assert r.stderr.count("tokens/s") == 2


def test_cli_chat_repl_and_errors(adapter_run: Path, tmp_path: Path) -> None:
    r = run_cli("chat", "--adapter", str(adapter_run / "checkpoints" / "step-000001"), "--max-tokens", "4",
                input="hello\n/clear\nagain\n/quit\n", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("tokens/s") == 2
    r = run_cli("chat", str(tmp_path), "--prompt", "hi")
    assert r.returncode == 1 and "not a run" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("chat")
    assert r.returncode == 2
