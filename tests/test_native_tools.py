"""Native tool calling: structured calls and tool schemas in the data, Mistral's tool tokens, every
assistant turn trained in SFT (issue 19)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tunedeck.core import convert, data, template, toolcalls
from tunedeck.core.batching import pack, tokenize

SAMPLE = Path(__file__).parents[1] / "sample_data"
NATIVE = SAMPLE / "notes_tool_use_native.jsonl"
CONTENT = SAMPLE / "notes_tool_use.jsonl"
TOOLS = json.loads((SAMPLE / "tools.json").read_text())


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def where(ds) -> list[tuple[int, str, str]]:
    return [(p.line, p.field, p.code) for p in ds.problems]


def call(name: str, arguments, cid: str | None = "abc123def") -> dict:
    c = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return c | ({"id": cid} if cid else {})


def record(*calls, label=True, **extra) -> dict:
    return {"messages": [{"role": "user", "content": "find the garden note"},
                         {"role": "assistant", "content": None, "tool_calls": list(calls)}], "label": label, **extra}


# ---------------------------------------------------------------- data


def test_native_sample_data_loads_with_the_right_counts():
    ds = data.load(NATIVE)
    st = data.compute_stats(ds)
    assert (st["total"], st["desirable"], st["undesirable"], st["format"]) == (1000, 750, 250, "messages")
    assert ds.native and ds.tools_source == str(NATIVE.parent / "tools.json") and st["tools"] == 7
    assert st["native_tool_calls"] == 1071 and st["tool_results"] == 544
    assert not ds.errors and all("(in an undesirable completion)" in p.message for p in ds.warnings)
    assert all(ex.tools == ds.tools for ex in ds.examples)
    content = data.load(CONTENT)  # the content-embedded form is unchanged: no tools rendered, no structured calls
    assert not content.native and all(ex.tools is None and ex.final is None for ex in content.examples)
    assert [e.completion for e in content.examples if not e.completion.startswith("{")] == \
           [e.completion for e in ds.examples if e.final is None and not e.completion.startswith("{")]


def test_structured_calls_arguments_as_object_or_json_string(tmp_path):
    ds = data.load(write_jsonl(tmp_path / "d.jsonl", [
        record(call("read_note", {"path": "a.md"})),
        record(call("read_note", '{"path": "b.md"}', None)),
        {"messages": [{"role": "user", "content": "x"},
                      {"role": "assistant", "content": "", "tool_calls": [call("search_notes", {"query": "q"}, "k1")]},
                      {"role": "tool", "tool_call_id": "k1", "name": "search_notes", "content": "[]"},
                      {"role": "assistant", "content": "Nothing found."}], "tools": TOOLS[:1]},
    ]), strict=True)
    a, b, c = ds.examples
    assert a.final["tool_calls"] == [{"type": "function", "function": {"name": "read_note", "arguments": {"path": "a.md"}},
                                      "id": "abc123def"}]
    assert b.final["tool_calls"][0]["function"]["arguments"] == {"path": "b.md"} and "id" not in b.final["tool_calls"][0]
    assert a.completion == '[TOOL_CALLS] [{"name": "read_note", "arguments": {"path": "a.md"}}]'
    assert c.prompt[2] == {"role": "tool", "content": "[]", "tool_call_id": "k1", "name": "search_notes"}
    assert c.tools[0]["function"]["name"] == "search_notes" and len(c.tools) == 1  # its own tools win
    assert a.native and a.tools is None  # no tools.json beside it and no data.tools: no schemas to render
    assert toolcalls.parse_tool_call(a.completion).arguments == {"path": "a.md"}


def test_calls_are_validated_against_the_schema(tmp_path):
    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    records = [
        record(call("delete_note", {"path": "a.md"})),
        record(call("read_note", {})),
        record(call("search_notes", {"query": "x", "limit": "five"})),
        record(call("read_note", '{"path": "a.md"')),
        record(call("read_note", "[1, 2]")),
        record({"type": "function", "function": {"arguments": {}}}),
        {"messages": [{"role": "user", "content": "x", "tool_calls": [call("read_note", {"path": "a"})]},
                      {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "{}"},
                      {"role": "assistant", "content": "y"}]},
        record(call("delete_note", {"path": "a.md"}), label=False),
        record(call("read_note", {"path": "a.md"}), tools=[{"name": "read_note", "parameters": []}]),
    ]
    ds = data.load(write_jsonl(tmp_path / "d.jsonl", records), strict=False)
    f = "messages[1].tool_calls[0].function"
    assert [x for x in where(ds) if x[0] != 9] == [
        (1, f"{f}.name", "unknown_tool"),
        (2, f"{f}.arguments", "missing_argument"),
        (3, f"{f}.arguments.limit", "wrong_type"),
        (4, f"{f}.arguments", "arguments_json"),
        (5, f"{f}.arguments", "type"),
        (6, f"{f}.name", "missing"),
        (7, "messages[0].tool_calls", "tool_calls"),
        (8, "messages[1].tool_call_id", "tool_call_id"),
        (10, "tools[0].parameters", "type"),
    ]
    assert [(p.severity, p.code) for p in ds.problems if p.line == 9] == [("warning", "unknown_tool")]
    assert str(ds.problems[0]) == (f"{tmp_path / 'd.jsonl'}:1: {f}.name: unknown tool 'delete_note' (known: "
                                   "append_to_note, create_note, daily_note, list_tags, move_note, read_note, search_notes)")
    assert "not JSON: Expecting ',' delimiter" in ds.problems[3].message


def test_file_tools_from_config_path_and_bad_tools_files(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "t.json").write_text(json.dumps({"tools": TOOLS[:2]}))
    path = write_jsonl(tmp_path / "d.jsonl", [record(call("read_note", {"path": "a"}))])
    ds = data.load(path, tools="schemas/t.json")
    assert [t["function"]["name"] for t in ds.examples[0].tools] == ["search_notes", "read_note"]
    (tmp_path / "tools.json").write_text('[{"name": "x"}, {"description": 3}]')
    with pytest.raises(data.DataError) as e:
        data.load(path)
    assert [str(p) for p in e.value.problems] == [f"{tmp_path / 'tools.json'}:0: [1].name: missing",
                                                  f"{tmp_path / 'tools.json'}:0: [1].description: expected a string, got a number"]
    content = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "x"},
                                                               {"role": "assistant", "content": "y"}]}])
    assert data.load(content).examples  # a broken tools.json does not matter to a file without native calls
    with pytest.raises(data.DataError, match="file not found"):
        data.load(path, tools="missing.json")
    (tmp_path / "tools.json").write_text('[{"name": {"a": 1}}, {"name": ["b"]}]')  # unhashable names: no TypeError
    with pytest.raises(data.DataError) as e:
        data.load(path)
    assert [p.message for p in e.value.problems] == ["expected a string, got an object", "expected a string, got an array"]


# ---------------------------------------------------------------- rendering: Mistral v3 fidelity


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    pytest.importorskip("mistral_common")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(template.write_mistral_v3_tokenizer(tmp_path_factory.mktemp("m"))))


@functools.cache
def _mistral_common_tokenizer():
    """mistral-common's v3 tokenizer, loaded once (loading it is most of an encoding's cost)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(template.mistral_v3_model_path()))


def mistral_common_ids(messages: list[dict], tools: list[dict] | None) -> list[int]:
    """mistral-common's own encoding (InstructRequest with available_tools, ToolCalls, ToolMessages)."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, ToolMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest
    from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall

    out, system = [], []
    for m in messages:
        if m["role"] == "system":
            system.append(m["content"])
        elif m["role"] == "user":
            out.append(UserMessage(content=m["content"]))
        elif m["role"] == "tool":
            out.append(ToolMessage(content=m["content"], tool_call_id=m["tool_call_id"]))
        elif m.get("tool_calls"):
            out.append(AssistantMessage(tool_calls=[
                ToolCall(id=c["id"], function=FunctionCall(name=c["function"]["name"],
                                                           arguments=json.dumps(c["function"]["arguments"])))
                for c in m["tool_calls"]]))
        else:
            out.append(AssistantMessage(content=m["content"]))
    available = [Tool(function=Function(**t["function"])) for t in tools] if tools else None
    inner = _mistral_common_tokenizer().instruct_tokenizer
    request = InstructRequest(messages=out, available_tools=available, system_prompt="\n\n".join(system) or None)
    return inner.encode_instruct(request).tokens


def test_native_sample_data_ids_equal_mistral_common(mistral):
    """Every native sample example: tunedeck's ids (with the tools, [TOOL_CALLS] turns and tool results)
    are mistral-common's, and the completion starts right where the prompt's reference encoding ends."""
    examples = data.load(NATIVE).examples
    assert sum(ex.final is not None for ex in examples) > 400
    for ex in examples:
        enc = template.encode_example(mistral, ex, train_on="all_assistant")
        assert enc.ids == mistral_common_ids(ex.messages, ex.tools), ex.line
        if ex.prompt[-1]["role"] != "assistant":
            assert enc.ids[: enc.prompt_len] == mistral_common_ids(ex.prompt, ex.tools), ex.line


@pytest.mark.slow
def test_data_show_json_is_the_reference_encoding(mistral, tmp_path):
    mistral.save_pretrained(str(tmp_path / "tok"))
    examples = {ex.line: ex for ex in data.load(NATIVE).examples}
    for line in (1, 2, 5):
        r = run_cli("data", "show", str(NATIVE), "--line", str(line), "--model", str(tmp_path / "tok"), "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        ex = examples[line]
        assert out["ids"] == mistral_common_ids(ex.messages, ex.tools)
        assert len(out["trained"]) == len(out["ids"]) and set(out["trained"]) == {0, 1}
        assert out["trained"] == template.encode_example(mistral, ex, train_on="all_assistant").trained
    r = run_cli("data", "show", str(NATIVE), "--line", "1001", "--model", str(tmp_path / "tok"))
    assert r.returncode == 1 and "line 1001: no example there" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- what is trained: TRL's assistant_only_loss


def generation_template() -> str:
    """The Mistral template with `{% generation %}` around each assistant turn's output (TRL's way to
    mark what assistant_only_loss trains)."""
    t = template.MISTRAL_V3_CHAT_TEMPLATE
    for a, b in ((" + eos_token }}", " + eos_token }}{% endgeneration %}"),
                 ("{{- '[TOOL_CALLS] [' }}", "{% generation %}{{- '[TOOL_CALLS] [' }}"),
                 ("{{- ' ' + m['content']", "{% generation %}{{- ' ' + m['content']")):
        assert t.count(a) == (2 if a.startswith(" +") else 1)
        t = t.replace(a, b)
    return t


def trl_mask(tok, ex) -> list[int]:
    """transformers' return_assistant_tokens_mask on the {% generation %} template: what TRL's SFTTrainer
    (assistant_only_loss=True) trains, computed without torch."""
    out = tok.apply_chat_template(ex.messages, tools=ex.tools, chat_template=generation_template(), tokenize=True,
                                  return_dict=True, return_assistant_tokens_mask=True)
    return list(out["assistant_masks"])


@pytest.mark.parametrize("path", [CONTENT, NATIVE], ids=["content", "native"])
def test_sft_trains_what_trl_assistant_only_loss_trains(mistral, path):
    examples = data.load(path).examples
    ours = trl = 0
    for ex in examples:
        enc = template.encode_example(mistral, ex, train_on="all_assistant")
        mask = trl_mask(mistral, ex)
        assert enc.trained == mask, ex.line
        ours, trl = ours + sum(enc.trained), trl + sum(mask)
    assert ours == trl
    last = sum(template.encode_example(mistral, ex).completion_len for ex in examples)
    assert last < ours  # the earlier turns (550 multi-turn examples) are trained now too


def test_batches_train_every_span(mistral):
    examples = data.load(NATIVE).examples[:8]
    seqs = tokenize(mistral, examples, 4096, False, 0, train_on="all_assistant")
    encs = [template.encode_example(mistral, ex, train_on="all_assistant") for ex in examples]
    idx = np.arange(len(examples))
    assert seqs.trained_tokens(idx) == sum(sum(e.trained) for e in encs)
    tokens, positions, targets, mask = pack([seqs.ids[i] for i in idx], seqs.starts, trained=seqs.trained_at(idx))
    for b, e in enumerate(encs):
        trained = [i for i, t in enumerate(e.trained) if t]
        n = int(mask[b].sum())
        assert targets[b, :n].tolist() == [e.ids[i] for i in trained] and positions[b, :n].tolist() == [i - 1 for i in trained]
    kto = tokenize(mistral, examples, 4096, True, 0, train_on="all_assistant")
    assert kto.trained is None and kto.starts.tolist() == [e.prompt_len for e in encs]  # KTO: the last turn


def test_truncation_keeps_the_spans_that_fit(mistral):
    ex = data.load(NATIVE).examples[1]
    full = template.encode_example(mistral, ex, train_on="all_assistant")
    cut = template.encode_example(mistral, ex, max_seq_len=len(full.ids) - 30, train_on="all_assistant")
    kept = cut.truncated_prompt_tokens
    assert cut.ids == full.ids[:1] + full.ids[1 + kept:]
    assert cut.trained == full.trained[:1] + full.trained[1 + kept:]


# ---------------------------------------------------------------- convert


@pytest.mark.slow
def test_convert_to_native_and_back(tmp_path):
    out = tmp_path / "native.jsonl"
    r = run_cli("data", "convert", str(CONTENT), str(out), "--to", "native")
    assert r.returncode == 0, r.stderr
    assert "1000 records, 1071 tool calls converted to native" in r.stdout
    assert "left as text: invalid JSON" in r.stdout and (tmp_path / "tools.json").is_file()
    ds = data.load(out)
    assert (len(ds.examples), ds.desirable, ds.native, len(ds.errors)) == (1000, 750, True, 0)
    assert [e.messages for e in ds.examples] == [e.messages for e in data.load(NATIVE).examples]  # = the shipped file
    back = tmp_path / "back.jsonl"
    assert run_cli("data", "convert", str(out), str(back), "--to", "content").returncode == 0
    assert [e.messages for e in data.load(back).examples] == [e.messages for e in data.load(CONTENT).examples]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.jsonl", "native.jsonl", "tools.json"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    r = run_cli("data", "convert", str(bad), str(tmp_path / "o.jsonl"), "--to", "native")
    assert r.returncode == 1 and "bad.jsonl:1: messages[0].role" in r.stdout and not (tmp_path / "o.jsonl").exists()


def test_convert_record_pairs_results_with_calls():
    report = convert.Report()
    rec = {"conversations": [{"role": "user", "content": "x"},
                             {"role": "assistant", "content": '{"name": "read_note", "arguments": {"path": "a"}}'},
                             {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "Done."}], "label": True}
    out = convert.convert_record(rec, 7, "native", report)
    cid = out["conversations"][1]["tool_calls"][0]["id"]
    assert len(cid) == 9 and cid.isalnum() and out["conversations"][2]["tool_call_id"] == cid
    assert out["label"] is True and report.calls == 1 and report.left == []


# ---------------------------------------------------------------- tool-call reading


def test_native_calls_are_read_in_every_form():
    box = toolcalls.Toolbox(toolcalls.specs(TOOLS), "tools.json", None)
    for text in ('[TOOL_CALLS] [{"name": "read_note", "arguments": {"path": "a.md"}, "id": "abc123def"}]',
                 '[TOOL_CALLS] [{"type": "function", "function": {"name": "read_note", "arguments": "{\\"path\\": \\"a.md\\"}"}}]',
                 '{"name": "read_note", "arguments": "{\\"path\\": \\"a.md\\"}"}'):
        v = toolcalls.check_tool_call(text, box)
        assert v.ok and v.call.name == "read_note" and v.call.arguments == {"path": "a.md"}, text
    v = toolcalls.check_tool_call('[TOOL_CALLS] [{"name": "read_note", "arguments": {}}]', box)
    assert v.code == "missing_argument"
    ex = data.load(NATIVE).examples
    tb = toolcalls.toolbox([e.completion for e in ex if e.label], NATIVE, ex[0].tools, "tools.json")
    assert tb.format == "mistral" and tb.names == sorted(t["name"] for t in TOOLS)


# ---------------------------------------------------------------- training on native data


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "kto"])
def test_native_data_trains_on_the_demo_model(tmp_path, demo_model, method):
    from tunedeck.core import config as C
    from tunedeck.core import runs

    lines = NATIVE.read_text(encoding="utf-8").splitlines(keepends=True)[:16]  # both labels; long tool prompts
    (tmp_path / "data.jsonl").write_text("".join(lines), encoding="utf-8")
    (tmp_path / "schemas.json").write_text(json.dumps(TOOLS), encoding="utf-8")
    cfg = C.preset("demo", str(tmp_path / "data.jsonl"))
    cfg.model.path = str(demo_model)
    cfg.data.tools, cfg.data.max_seq_len, cfg.data.valid_fraction = "schemas.json", 1024, 0.125
    cfg.train.method, cfg.train.iters, cfg.train.batch_size, cfg.train.warmup_steps = method, 3, 2, 1
    cfg.train.save_every = cfg.train.eval_every = 3
    cfg.train.eval_batches, cfg.lora.rank = 1, 1
    C.save(cfg, tmp_path / "t.toml")
    r = run_cli("data", "check", str(tmp_path / "data.jsonl"), "--json")
    st = json.loads(r.stdout)
    assert (st["ok"], st["total"], st["native_tool_calls"]) == (True, 16, sum(
        len(m.get("tool_calls", ())) for e in data.load(NATIVE).examples[:16] for m in e.messages))
    r = run_cli("train", str(tmp_path / "t.toml"), "--run-dir", str(tmp_path / "run"), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr + runs.tail_log(tmp_path / "run", 40)
    steps = [e for e in runs.read_events(tmp_path / "run") if e["type"] == "step"]
    assert len(steps) == 3 and all(np.isfinite(e["loss"]) for e in steps)
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(demo_model))
    train, _ = data.split(data.load(tmp_path / "data.jsonl", tools="schemas.json").examples, 0.125, cfg.train.seed)
    if method == "sft":  # every assistant turn of the desirable examples is trained
        seqs = tokenize(tok, [e for e in train if e.label], 1024, False, 0, train_on="all_assistant")
        assert seqs.trained is not None


def test_a_native_reply_becomes_structured_calls_for_the_history_and_the_screen():
    text = '[TOOL_CALLS] [{"name": "read_note", "arguments": {"path": "a.md"}, "id": "abc123def"}]'
    msg = toolcalls.reply_message(text)
    assert msg == {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "read_note", "arguments": {"path": "a.md"}},
                                   "id": "abc123def"}]}
    assert toolcalls.reply_message("Sure.") == {"role": "assistant", "content": "Sure."}
    specs = toolcalls.specs(TOOLS)
    assert toolcalls.describe_calls(text, specs) == ['tool call read_note({"path": "a.md"}) — valid']
    bad = '[TOOL_CALLS] [{"name": "read_note", "arguments": {}}]'
    assert toolcalls.describe_calls(bad, specs) == [
        "tool call read_note({}) — call to read_note is missing required argument 'path'"]
    assert toolcalls.describe_calls("[TOOL_CALLS] [{", specs)[0].startswith("tool call, not readable: invalid JSON")
    assert toolcalls.describe_calls("Sure.", specs) is None


def test_chat_tools_file_problems_are_one_message(tmp_path):
    (tmp_path / "t.json").write_text('[{"description": "no name"}]')
    (tmp_path / "adapters").mkdir()
    r = run_cli("chat", "--adapter", str(tmp_path / "adapters"), "--model", str(tmp_path), "--tools",
                str(tmp_path / "t.json"), "--prompt", "hi")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{tmp_path / 't.json'}:0: [0].name: missing" in r.stderr
