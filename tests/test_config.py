"""Config: round trip, every validation path, --set typing, TOML syntax errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunedeck.core import config as C


def test_defaults_are_the_mac_24gb_preset() -> None:
    cfg = C.Config()
    assert cfg.model.path == C.DEFAULT_MODEL and cfg.model.quantize == 4
    assert (cfg.lora.rank, cfg.lora.scale, cfg.lora.dropout) == (16, 2.0, 0.05)
    assert cfg.lora.keys == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.train.batch_size == 4 and cfg.data.max_seq_len == 2048 and cfg.train.grad_checkpoint
    assert cfg.kto.beta == 0.1 and cfg.train.lr_schedule == "cosine"
    assert C.validate(cfg) == []


def test_learning_rate_defaults_per_method() -> None:
    cfg = C.Config()
    cfg.train.method = "sft"
    assert cfg.learning_rate == C.DEFAULT_LR["sft"]
    cfg.train.method = "kto"
    assert cfg.learning_rate == C.DEFAULT_LR["kto"] < C.DEFAULT_LR["sft"]
    cfg.train.learning_rate = 3e-5
    assert cfg.learning_rate == 3e-5


@pytest.mark.parametrize("name", C.PRESETS)
@pytest.mark.parametrize("comments", [False, True])
def test_round_trip(tmp_path: Path, name: str, comments: bool) -> None:
    cfg = C.preset(name, data_path="x.jsonl")
    cfg.lora.keys = ["q_proj", "v_proj"]
    path = tmp_path / "c.toml"
    C.save(cfg, path, comments=comments)
    loaded, warnings = C.load(path)
    assert loaded == cfg
    assert not C.errors(warnings)
    assert not list(tmp_path.glob("*.tmp"))


def problems_of(text: str) -> dict[str, str]:
    cfg, problems = C.loads(text)
    return {p.key: p.message for p in C.errors(problems)}


def test_every_problem_reported_with_key_value_and_expectation() -> None:
    got = problems_of(
        """
        [model]
        quantize = 3
        [train]
        batch_size = "four"
        iters = 0
        bogus = 1
        method = "dpo"
        [lora]
        rank = 2.5
        keys = ["q_proj", 3]
        [kto]
        beta = -1.0
        [extra]
        a = 1
        """
    )
    assert "expected one of 0, 4, 8" in got["model.quantize"] and "got 3" in got["model.quantize"]
    assert got["train.batch_size"] == "expected an integer, got string 'four'"
    assert "expected >= 1" in got["train.iters"]
    assert "unknown key" in got["train.bogus"] and "batch_size" in got["train.bogus"]
    assert "'sft', 'kto'" in got["train.method"]
    assert got["lora.rank"] == "expected an integer, got number 2.5"
    assert "list of strings" in got["lora.keys"]
    assert "expected > 0" in got["kto.beta"]
    assert "unknown section" in got["extra"]


def test_nan_and_inf_refused() -> None:
    got = problems_of("[kto]\nbeta = nan\n[train]\nlearning_rate = inf\n")
    assert "finite" in got["kto.beta"] and "finite" in got["train.learning_rate"]


def test_section_must_be_a_table() -> None:
    assert "expected a table" in problems_of("train = 3\n")["train"]


def test_kto_batch_of_one_is_an_error_and_small_batch_a_warning() -> None:
    assert "at least 2" in problems_of("[train]\nmethod='kto'\nbatch_size=1\n")["train.batch_size"]
    _, problems = C.loads("[train]\nmethod='kto'\nbatch_size=2\n")
    warn = [p for p in problems if p.severity == "warning"]
    assert [p.key for p in warn] == ["train.batch_size"]
    assert problems_of("[train]\nmethod='sft'\nbatch_size=1\n") == {}


def test_a_compiled_step_is_a_warning() -> None:
    _, problems = C.loads("[train]\ncompile = 'on'\n")
    assert [(p.key, p.severity) for p in problems] == [("train.compile", "warning")]
    assert "new batch shape" in problems[0].message
    assert C.loads("[train]\ncompile = 'auto'\n")[1] == []


def test_on_off_keys_read_booleans() -> None:
    """A config written when train.lean_backward was a boolean still loads; other string keys keep refusing
    booleans, and a bad choice names the three."""
    cfg, problems = C.loads("[train]\nlean_backward = true\ncompile = false\n")
    assert problems == [] and (cfg.train.lean_backward, cfg.train.compile) == ("on", "off")
    assert C.loads("[train]\nlean_backward = false\n")[0].train.lean_backward == "off"
    _, problems = C.loads("[train]\nlean_backward = 'maybe'\nmethod = true\n")
    assert {p.key: p.message for p in problems} == {
        "train.lean_backward": "got 'maybe'; expected one of 'auto', 'on', 'off'",
        "train.method": "expected a string, got boolean True"}


def test_invalid_toml_reports_line_and_column() -> None:
    cfg, problems = C.loads("[train]\niters = 5\nbatch_size = = 2\n")
    assert cfg is None
    (p,) = problems
    assert p.line == 3 and p.column is not None and "invalid TOML" in p.message
    assert "line 3" in str(p)


def test_load_raises_with_all_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[train]\niters = -1\nbatch_size = 0\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(path)
    assert {p.key for p in e.value.problems} == {"train.iters", "train.batch_size"}
    assert str(path) in str(e.value)
    with pytest.raises(C.ConfigError, match="file not found"):
        C.load(tmp_path / "missing.toml")
    with pytest.raises(C.ConfigError, match="directory"):
        C.load(tmp_path)


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("train.iters=50", "train.iters", 50),
        ("train.learning_rate=2e-5", "train.learning_rate", 2e-5),
        ("train.learning_rate=1", "train.learning_rate", 1.0),
        ("train.grad_checkpoint=false", "train.grad_checkpoint", False),
        ("model.path=/tmp/my model", "model.path", "/tmp/my model"),
        ("model.path=123", "model.path", "123"),
        ("lora.keys=q_proj, v_proj", "lora.keys", ["q_proj", "v_proj"]),
        ('lora.keys=["k_proj"]', "lora.keys", ["k_proj"]),
        ("train.method=sft", "train.method", "sft"),
        ("train.lean_backward=true", "train.lean_backward", "on"),  # it was a boolean before "auto"
        ("train.lean_backward=false", "train.lean_backward", "off"),
        ("train.lean_backward=auto", "train.lean_backward", "auto"),
        ("train.compile=true", "train.compile", "on"),
    ],
)
def test_set_overrides_are_typed(item: str, key: str, value: object) -> None:
    cfg = C.Config()
    assert C.apply_overrides(cfg, [item]) == []
    got = C.get_value(cfg, key)
    assert got == value and type(got) is type(value)


def test_bad_overrides(tmp_path: Path) -> None:
    cfg = C.Config()
    problems = C.apply_overrides(cfg, ["train.iters=many", "nope.x=1", "noequals"])
    assert [p.key for p in problems] == ["train.iters", "nope.x", ""]
    path = tmp_path / "c.toml"
    C.save(C.Config(), path)
    with pytest.raises(C.ConfigError, match="train.batch_size"):
        C.load(path, ["train.batch_size=0"])
