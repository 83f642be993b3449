"""core.data: formats, validation that loses nothing, stats, splits, KTO weights, `data check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunedeck.core import data
from tunedeck.core.data import DataError, Example, Problem, load

FIX = Path(__file__).parent / "fixtures"


def conv(user: str, answer: str, label: bool | None = True, **extra) -> dict:
    rec = {"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    if label is not None:
        rec["label"] = label
    return {**rec, **extra}


def write_jsonl(path: Path, records: list, newline: str = "\n") -> Path:
    path.write_text("".join(json.dumps(r) + newline for r in records), encoding="utf-8")
    return path


def where(ds_or_err) -> list[tuple[int, str, str]]:
    return [(p.line, p.field, p.code) for p in ds_or_err.problems]


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "name, fmt, total, desirable",
    [
        ("kto.jsonl", "kto", 3, 2),
        ("messages.jsonl", "messages", 2, 1),
        ("trl_unpaired.jsonl", "trl_unpaired", 3, 2),
        ("prompt_completion.jsonl", "prompt_completion", 2, 2),
        ("sharegpt.jsonl", "sharegpt", 2, 2),
        ("text.jsonl", "text", 2, 2),
        ("list.json", "messages", 2, 1),
    ],
)
def test_every_format_is_detected_and_parsed(name, fmt, total, desirable):
    ds = load(FIX / name)
    assert (ds.format, len(ds.examples), ds.desirable, ds.undesirable) == (fmt, total, desirable, total - desirable)
    assert ds.problems == [] and ds.skipped == 0
    assert len(ds.sha256) == 64
    for ex in ds.examples:
        assert ex.completion and ex.messages[-1] == {"role": "assistant", "content": ex.completion}
        assert ex.turns == len(ex.messages)


def test_multi_turn_prompt_and_completion():
    first, _, tools = load(FIX / "kto.jsonl").examples
    assert first.prompt == [
        {"role": "user", "content": "Find my notes about the garden"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "And the pond?"},
    ]
    assert first.completion == "Here are your pond notes." and first.line == 1 and first.turns == 4
    assert first.raw == (FIX / "kto.jsonl").read_text().splitlines()[0]
    assert [m["role"] for m in tools.prompt] == ["user", "assistant", "tool"]
    assert tools.line == 4  # the blank line 3 is skipped but still counted


def test_trl_prompt_string_becomes_user_message_and_lists_are_kept():
    a, b, c = load(FIX / "trl_unpaired.jsonl").examples
    assert a.prompt == [{"role": "user", "content": "Name a colour."}] and a.completion == "Blue."
    assert [m["role"] for m in b.prompt] == ["system", "user"] and b.completion == "Bleu."
    assert c.label is False


def test_sharegpt_roles_are_mapped():
    ex = load(FIX / "sharegpt.jsonl").examples[0]
    assert [m["role"] for m in ex.prompt] == ["system", "user", "assistant", "tool"]
    assert ex.completion == "It is 4°C in Oslo."


def test_text_format_has_an_empty_prompt():
    ex = load(FIX / "text.jsonl").examples[0]
    assert ex.prompt == [] and ex.completion.startswith("The quick") and ex.label is True


def test_json_list_lines_are_list_indices():
    ds = load(FIX / "list.json")
    assert [e.line for e in ds.examples] == [1, 2] and json.loads(ds.examples[1].raw)["label"] is False


def test_json_list_problems(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  3\n]\n')
    ds = load(path, strict=False)
    assert [e.completion for e in ds.examples] == ["a"] and where(ds) == [(2, "", "not_object")]
    path.write_text('[\n  {"text": "a"},\n  {"text": }\n]\n')
    with pytest.raises(DataError) as info:
        load(path)
    assert where(info.value) == [(3, "", "json")] and "column 12" in str(info.value)


@pytest.mark.parametrize(
    "record, fmt",
    [
        (conv("a", "b"), "kto"),
        ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt"),
        ({"messages": []}, "messages"),
        ({"prompt": "a", "completion": "b", "label": False}, "trl_unpaired"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"text": "a"}, "text"),
        ({"input": "a", "output": "b"}, None),
    ],
)
def test_detect_format(record, fmt):
    assert data.detect_format(record) == fmt


# ---------------------------------------------------------------- validation


def test_bad_file_lists_every_problem_with_line_field_and_reason():
    with pytest.raises(DataError) as info:
        load(FIX / "bad.jsonl")
    err = info.value
    assert where(err) == [
        (2, "", "json"),
        (3, "", "not_object"),
        (4, "", "not_object"),
        (5, "conversations[0].role", "no_assistant"),
        (6, "conversations", "empty"),
        (7, "conversations[0].role", "role"),
        (7, "conversations[1].content", "empty"),
        (8, "conversations[0].content", "missing"),
        (8, "conversations[1].content", "type"),
        (8, "label", "label"),
        (9, "conversations", "type"),
        (10, "label", "label_coerced"),
        (11, "", "mixed_format"),
        (12, "", "duplicate"),
        (13, "label", "label_conflict"),
        (14, "label", "label"),
    ]
    by = {(p.line, p.field): p for p in err.problems}
    assert "column 65" in by[2, ""].message and "invalid JSON" in by[2, ""].message
    assert "got an array" in by[3, ""].message and "got null" in by[4, ""].message
    assert "must end with an assistant turn" in by[5, "conversations[0].role"].message
    assert "unknown role 'robot'" in by[7, "conversations[0].role"].message
    assert "got a number" in by[8, "conversations[1].content"].message
    assert '"maybe"' in by[8, "label"].message
    assert "file is 'kto'" in by[11, ""].message
    assert "line 1" in by[13, "label"].message and "desirable" in by[13, "label"].message
    assert by[10, "label"].severity == "warning" and by[2, ""].severity == "error"
    text = str(err).splitlines()
    assert len(text) == len(err.problems)
    assert text[0] == f"{FIX / 'bad.jsonl'}:2: " + by[2, ""].message
    assert f"{FIX / 'bad.jsonl'}:7: conversations[0].role: unknown role" in str(err)


def test_lenient_sets_bad_lines_aside_and_reports_them():
    ds = load(FIX / "bad.jsonl", strict=False)
    assert [e.line for e in ds.examples] == [1, 10, 13]
    assert [e.label for e in ds.examples] == [True, True, False]
    assert ds.skipped == 11  # 10 bad lines + 1 duplicate
    assert len({p.line for p in ds.errors}) == 10 and len(ds.warnings) == 3


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "file is empty"),
        (lambda p: (p.write_bytes(b"\n  \r\n\n"), p)[1], "only blank lines"),
    ],
)
def test_unusable_files_give_one_clear_problem(tmp_path, setup, message):
    path = setup(tmp_path / "d.jsonl")
    for strict in (True, False):
        with pytest.raises(DataError) as info:
            load(path, strict=strict)
        assert len(info.value.problems) == 1 and info.value.problems[0].line == 0
        assert message in str(info.value)


def test_unknown_format_name(tmp_path):
    with pytest.raises(DataError, match="unknown format 'alpaca'"):
        load(write_jsonl(tmp_path / "d.jsonl", [conv("a", "b")]), format="alpaca")


def test_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(conv("a", "b")).encode() + b"\r\n\r\n  \n"
                     + json.dumps(conv("c", "d", False)).encode() + b"\r\n")
    ds = load(path)
    assert [(e.line, e.label) for e in ds.examples] == [(1, True), (4, False)]
    assert ds.examples[0].raw == json.dumps(conv("a", "b"))  # no BOM, no CR
    assert where(ds) == [(1, "", "bom")] and ds.problems[0].severity == "warning"
    assert ds.skipped == 0


def test_invalid_utf8_nul_and_long_lines_do_not_stop_reading(tmp_path):
    good = json.dumps(conv("a", "b")).encode()
    long = json.dumps(conv("x" * (data.MAX_LINE_BYTES + 10), "y")).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + b"\n" + b'{"text": "caf\xe9"}\n' + b'{"a":\x00}\n' + long + b"\n"
                     + json.dumps(conv("e", "f")).encode())
    ds = load(path, strict=False)
    assert [e.line for e in ds.examples] == [1, 5]
    assert where(ds) == [(2, "", "utf8"), (3, "", "nul"), (4, "", "too_long")]
    utf8 = ds.problems[0].message
    assert "byte 13 of the line" in utf8 and f"file offset {len(good) + 1 + 13}" in utf8
    assert "1 MB" in ds.problems[2].message
    assert ds.sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "label, expect, code",
    [(1, True, "label_coerced"), (0, False, "label_coerced"), ("true", True, "label_coerced"),
     (" FALSE ", False, "label_coerced"), ("yes", None, "label"), (2, None, "label"), (None, None, "label"),
     ([True], None, "label")],
)
def test_label_coercion(tmp_path, label, expect, code):
    rec = conv("a", "b")
    rec["label"] = label
    ds = load(write_jsonl(tmp_path / "d.jsonl", [rec]), strict=False)
    assert where(ds) == [(1, "label", code)]
    assert [e.label for e in ds.examples] == ([] if expect is None else [expect])


def test_missing_label_is_desirable_with_warning_only_when_others_have_labels(tmp_path):
    ds = load(write_jsonl(tmp_path / "a.jsonl", [conv("a", "b", None), conv("c", "d", None)]))
    assert ds.desirable == 2 and ds.problems == []
    ds = load(write_jsonl(tmp_path / "b.jsonl", [conv("a", "b", False), conv("c", "d", None)]))
    assert [e.label for e in ds.examples] == [False, True]
    assert where(ds) == [(2, "label", "label_missing")]


def test_duplicates_and_conflicting_labels(tmp_path):
    recs = [conv("a", "b"), conv("c", "d"), conv("a", "b"), conv("a", "b", False), conv("a", "b")]
    ds = load(write_jsonl(tmp_path / "d.jsonl", recs))
    assert [e.line for e in ds.examples] == [1, 2, 4]
    assert where(ds) == [(3, "", "duplicate"), (4, "label", "label_conflict"), (5, "", "duplicate")]
    assert "duplicate of line 1" in ds.problems[0].message
    assert ds.skipped == 2 and data.compute_stats(ds)["duplicates"] == 2


def test_mixed_formats_error_on_the_odd_lines(tmp_path):
    recs = [conv("a", "b"), {"text": "t"}, conv("c", "d"), {"messages": [{"role": "user", "content": "x"}]},
            conv("e", "f")]
    ds = load(write_jsonl(tmp_path / "d.jsonl", recs), strict=False)
    assert ds.format == "kto" and [e.line for e in ds.examples] == [1, 3, 5]
    assert where(ds) == [(2, "", "mixed_format"), (4, "", "mixed_format")]


def test_trl_file_may_mix_labelled_and_unlabelled_lines(tmp_path):
    recs = [{"prompt": "a", "completion": "b", "label": False}, {"prompt": "c", "completion": "d"}]
    ds = load(write_jsonl(tmp_path / "d.jsonl", recs))
    assert ds.format == "trl_unpaired" and where(ds) == [(2, "label", "label_missing")]


def test_forced_format_reports_missing_fields_with_a_hint(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [conv("a", "b"), {"text": "t"}])
    with pytest.raises(DataError) as info:
        load(path, format="kto")
    assert where(info.value) == [(2, "conversations", "missing"), (2, "", "mixed_format")]
    assert "looks like the 'text' format" in str(info.value)
    assert load(path, format="text", strict=False).examples[0].line == 2


def test_unrecognised_records(tmp_path):
    ds = load(write_jsonl(tmp_path / "d.jsonl", [{"input": "a", "output": "b"}]), strict=False)
    assert ds.format == "unknown" and where(ds) == [(1, "", "format")]
    assert "found keys: input, output" in ds.problems[0].message


def test_trl_prompt_and_completion_problems_are_all_listed(tmp_path):
    recs = [{"prompt": [{"role": "user"}], "completion": [{"role": "user", "content": "x"}], "label": True},
            {"prompt": "", "completion": 3, "label": True}]
    ds = load(write_jsonl(tmp_path / "d.jsonl", recs), strict=False)
    assert where(ds) == [(1, "prompt[0].content", "missing"), (1, "completion[0].role", "no_assistant"),
                         (2, "prompt", "empty"), (2, "completion", "type")]


def test_structured_tool_calls_are_read_and_broken_ones_named(tmp_path):
    call = {"type": "function", "function": {"name": "read_note", "arguments": {"path": "a.md"}}}
    ok = [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": c, "tool_calls": [call]}]}
          for c in (None, "")]
    bad = {"messages": [{"role": "user", "content": "x"},
                        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]}
    ds = load(write_jsonl(tmp_path / "d.jsonl", [*ok, bad]), strict=False)
    assert [e.final["tool_calls"][0]["function"]["name"] for e in ds.examples] == ["read_note"]  # "" = null
    assert where(ds) == [(2, "", "duplicate"), (3, "messages[1].tool_calls[0].name", "missing"),
                         (3, "messages[1].tool_calls[0].arguments", "missing")]


def test_problem_str():
    assert str(Problem("d.jsonl", 3, "label", "bad")) == "d.jsonl:3: label: bad"
    assert str(Problem("d.jsonl", 3, "", "bad")) == "d.jsonl:3: bad"


def test_load_streams_memory_follows_kept_examples(tmp_path):
    """Streaming: memory is proportional to the examples kept, not to the file (speed: bench/data_load.py)."""
    import tracemalloc

    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(100_000):
            f.write(json.dumps(conv(f"q{i}", f"a{i}", i % 3 != 0)) + "\n")
    ds = load(path)
    assert len(ds.examples) == 100_000 and ds.undesirable == 33_334
    mostly_bad = tmp_path / "bad.jsonl"
    with open(mostly_bad, "w") as f:
        for i in range(100_000):
            f.write(json.dumps(conv(f"q{i}", f"a{i}", True)) + "\n" if i % 1000 == 0 else "{not json " + "x" * 40 + "\n")
    tracemalloc.start()
    kept = load(mostly_bad, strict=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(kept.examples) == 100 and kept.skipped == 99_900
    assert peak < 0.6 * mostly_bad.stat().st_size + len(kept.problems) * 600


# ---------------------------------------------------------------- stats, split, weights


def test_compute_stats_without_tokenizer():
    st = data.compute_stats(load(FIX / "kto.jsonl"))
    assert (st["total"], st["desirable"], st["undesirable"], st["format"]) == (3, 2, 1, "kto")
    assert st["desirable_ratio"] == pytest.approx(2 / 3)
    assert st["turns"] == {"min": 3, "mean": pytest.approx(11 / 3), "max": 4}
    assert set(st["chars"]) == {"p50", "p90", "p99", "max"} and st["chars"]["max"] >= st["chars"]["p50"] > 0
    assert st["tokens"] is None and st["over_max_seq_len"] is None
    assert (st["duplicates"], st["skipped"], st["errors"], st["warnings"]) == (0, 0, 0, 0)
    assert st["suggested_kto_weights"] == {"desirable_weight": 1.0, "undesirable_weight": 1.5}
    json.dumps(st)


def test_compute_stats_with_tokenizer_counts_truncation():
    tok = FakeTokenizer()
    ds = load(FIX / "kto.jsonl")
    st = data.compute_stats(ds, tok, max_seq_len=40)
    lengths = [len(tok.render(e.messages)) for e in ds.examples]
    assert st["tokens"]["max"] == max(lengths)
    assert st["over_max_seq_len"] == sum(n > 40 for n in lengths)
    assert st["truncated_tokens"] == sum(n - 40 for n in lengths if n > 40)  # completions all fit
    assert st["completion_too_long"] == 0
    assert data.compute_stats(ds, tok, max_seq_len=1)["completion_too_long"] == 3


class FakeTokenizer:
    """One id per character; each message renders as '<role>content', assistant turns end in id 0."""

    bos_token_id, eos_token_id, chat_template = None, 0, "fake"

    def render(self, messages, add_generation_prompt=False) -> list[int]:
        ids = []
        for m in messages:
            ids += self.encode(f"<{m['role']}>{m['content']}") + ([0] if m["role"] == "assistant" else [])
        return ids + (self.encode("<assistant>") if add_generation_prompt else [])

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        return {"input_ids": self.render(messages, add_generation_prompt)}  # like a BatchEncoding

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


def labelled(n_true: int, n_false: int) -> list[Example]:
    return [Example([], f"t{i}", True, i + 1, "") for i in range(n_true)] + [
        Example([], f"f{i}", False, n_true + i + 1, "") for i in range(n_false)]


def test_split_is_deterministic_stratified_and_complete():
    exs = labelled(90, 30)
    train, valid = data.split(exs, 0.1, seed=7)
    assert data.split(exs, 0.1, seed=7) == (train, valid)
    assert data.split(exs, 0.1, seed=8)[1] != valid
    assert sorted(e.line for e in train + valid) == list(range(1, 121))
    assert sum(e.label for e in valid) == 9 and sum(not e.label for e in valid) == 3
    assert [e.line for e in valid] == sorted(e.line for e in valid)


def test_split_keeps_one_valid_per_class_and_one_train():
    _, valid = data.split(labelled(10, 2), 0.05, seed=0)
    assert sorted(e.label for e in valid) == [False, True]
    train, valid = data.split(labelled(2, 1), 0.9, seed=0)
    assert [e.label for e in valid] == [True] and len(train) == 2
    assert data.split(labelled(5, 5), 0.0, seed=0)[1] == []
    with pytest.raises(ValueError):
        data.split(labelled(2, 2), 1.0, seed=0)


@pytest.mark.parametrize("nd, nu", [(10, 10), (1, 9), (9, 1), (100, 70), (130, 100), (3, 1000), (1000, 3),
                                    (4, 3), (57, 61), (0, 5), (5, 0)])
def test_suggested_kto_weights_satisfy_the_rule(nd, nu):
    wd, wu = data.suggest_kto_weights(nd, nu)
    assert 1.0 in (wd, wu) and round(wd, 2) == wd and round(wu, 2) == wu
    if nd and nu:
        assert 1 <= wd * nd / (wu * nu) <= 4 / 3
        assert data.check_kto_weights(nd, nu, wd, wu) is None


def test_check_kto_weights_warns_outside_the_range():
    assert data.check_kto_weights(100, 100, 1.0, 1.0) is None
    msg = data.check_kto_weights(100, 10, 1.0, 1.0)
    assert "outside [1, 1.33]" in msg and "undesirable_weight=7.5" in msg
    assert data.check_kto_weights(10, 100, 1.0, 1.0) is not None
    assert "both" in data.check_kto_weights(10, 0, 1.0, 1.0)
    assert "positive" in data.check_kto_weights(10, 10, 0.0, 1.0)


# ---------------------------------------------------------------- `tunedeck data check`


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `tunedeck` console script, in a real subprocess."""
    exe = Path(sys.executable).parent / "tunedeck"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


def test_data_check_cli_ok_and_bad(tmp_path):
    ok = run_cli("data", "check", str(FIX / "kto.jsonl"))
    assert ok.returncode == 0, ok.stderr
    assert "3 examples" in ok.stdout and "desirable    2 (66.7%)" in ok.stdout
    assert "undesirable  1 (33.3%)" in ok.stdout and "format kto" in ok.stdout

    bad = run_cli("data", "check", str(FIX / "bad.jsonl"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    out = bad.stdout.splitlines()
    for line in (2, 3, 4, 5, 6, 7, 8, 9, 11, 14):
        assert any(o.startswith(f"{FIX / 'bad.jsonl'}:{line}: ") and "warning" not in o for o in out), line
    assert "10 line(s)" in bad.stderr

    missing = run_cli("data", "check", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and "file not found" in missing.stdout and "Traceback" not in missing.stderr


def test_data_check_cli_json(tmp_path):
    res = run_cli("data", "check", str(FIX / "bad.jsonl"), "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert (doc["total"], doc["desirable"], doc["undesirable"], doc["format"]) == (3, 2, 1, "kto")
    assert {"line", "field", "message"} <= set(doc["errors"][0])
    assert [e["line"] for e in doc["warnings"]] == [10, 12, 13] and doc["ok"] is False
    assert {"turns", "chars", "suggested_kto_weights", "skipped"} <= set(doc)

    res = run_cli("data", "check", str(FIX / "bad.jsonl"), "--json", "--lenient", "--format", "kto")
    assert res.returncode == 0 and json.loads(res.stdout)["ok"] is True


def test_data_check_cli_token_stats_with_a_model_dir(tmp_path):
    pytest.importorskip("mistral_common")
    from tunedeck.core.template import write_mistral_v3_tokenizer

    tok = write_mistral_v3_tokenizer(tmp_path / "tok")
    res = run_cli("data", "check", str(FIX / "kto.jsonl"), "--model", str(tok), "--max-seq-len", "30", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["tokens"]["max"] == 58 and doc["over_max_seq_len"] == 1 and doc["truncated_tokens"] == 28
    res = run_cli("data", "check", str(FIX / "kto.jsonl"), "--model", str(tmp_path))
    assert res.returncode == 1 and "no tokenizer.json" in res.stderr and "Traceback" not in res.stderr
