"""Tool-call parsing and validation: hand-written good and broken calls, formats, tools, the sample data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunedeck.core import toolcalls as tc

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
TOOLS = tc.Toolbox(tc.load_tools(SAMPLE / "tools.json"), "tools.json", "json")


@pytest.mark.parametrize("text, fmt", [
    ('{"name": "read_note", "arguments": {"path": "a.md"}}', "json"),
    ('  {"name": "read_note", "arguments": {"path": "a.md"}}\n', "json"),
    ('[TOOL_CALLS] [{"name": "read_note", "arguments": {"path": "a.md"}}]', "mistral"),
    ('[TOOL_CALLS] {"name": "read_note", "arguments": {"path": "a.md"}}', "mistral"),
    ('Let me look.\n```json\n{"name": "read_note", "arguments": {"path": "a.md"}}\n```\n', "fenced"),
    ('```\n{"name": "read_note", "arguments": {"path": "a.md"}}\n```', "fenced"),
])
def test_good_calls_parse_in_each_format(text: str, fmt: str) -> None:
    call = tc.parse_tool_call(text, fmt)
    assert call == tc.ToolCall("read_note", {"path": "a.md"}, fmt)
    assert tc.parse_tool_call(text) == call  # the format is also recognised without being told
    v = tc.check_tool_call(text, TOOLS, fmt)
    assert v.ok and v.code == "ok" and v.call == call


@pytest.mark.parametrize("text, code, words", [
    ("Sure, I will search your notes.", "no_call", "no tool call"),
    ("{'name': 'search_notes', 'arguments': {'query': 'Q2'}}", "invalid_json", "invalid JSON"),
    ('{"name": "read_note", "arguments": {"path": "a.md",}}', "invalid_json", "invalid JSON"),
    ('{name: "read_note", arguments: {path: "a.md"}}', "invalid_json", "invalid JSON"),
    ('{"name": "read_note", "arguments": {"path": "a.md"}', "invalid_json", "invalid JSON"),
    ('{"name": "create_note", "arguments": {"path": "a.md", "content": "# T', "invalid_json", "invalid JSON"),
    ('Here you go:\n{"name": "read_note", "arguments": {"path": "a.md"}}', "extra_text", "text before"),
    ('{"name": "read_note", "arguments": {"path": "a.md"}} Done!', "extra_text", "text after"),
    ('{"tool": "read_note", "arguments": {"path": "a.md"}}', "not_a_call", '"name"'),
    ('{"name": "move_note", "dst": "b.md"}', "no_arguments", '"arguments"'),
    ('{"name": "read_note", "arguments": "a.md"}', "no_arguments", "non-object"),
    ('{"name": "delete_note", "arguments": {"path": "a.md"}}', "unknown_tool", "unknown tool 'delete_note'"),
    ('{"name": "move_note", "arguments": {"src": "a.md"}}', "missing_argument", "'dst'"),
    ('{"name": "append_to_note", "arguments": {}}', "missing_argument", "'path'"),
    ('{"name": "search_notes", "arguments": {"query": "x", "limit": "five"}}', "wrong_type", "integer"),
    ('{"name": "read_note", "arguments": {"path": ["a.md"]}}', "wrong_type", "should be string, got an array"),
    ('{"name": "search_notes", "arguments": {"query": "x", "limit": true}}', "wrong_type", "integer"),
])
def test_broken_calls_give_their_reason(text: str, code: str, words: str) -> None:
    v = tc.check_tool_call(text, TOOLS)
    assert not v.ok
    assert v.code == code, v.reason
    assert words in v.reason


def test_calls_without_required_arguments_are_fine() -> None:
    assert tc.check_tool_call('{"name": "list_tags", "arguments": {}}', TOOLS).ok
    assert tc.check_tool_call('{"name": "daily_note", "arguments": {"date": "2026-03-01"}}', TOOLS).ok


def test_mistral_list_checks_every_call() -> None:
    text = ('[TOOL_CALLS] [{"name": "read_note", "arguments": {"path": "a.md"}}, '
            '{"name": "move_note", "arguments": {"src": "a.md"}}]')
    v = tc.check_tool_call(text, TOOLS, "mistral")
    assert v.code == "missing_argument" and "'dst'" in v.reason
    assert [c.name for c in v.calls] == ["read_note", "move_note"]
    assert tc.check_tool_call("[TOOL_CALLS] [{'name': 'x'}]", TOOLS, "mistral").code == "invalid_json"
    assert tc.check_tool_call("Sure [TOOL_CALLS] []", TOOLS, "mistral").code == "extra_text"


def test_format_is_strict_when_given() -> None:
    fenced = '```json\n{"name": "read_note", "arguments": {"path": "a.md"}}\n```'
    assert tc.check_tool_call(fenced, TOOLS, "json").code == "extra_text"  # JSON must be the whole answer
    assert tc.check_tool_call(fenced, TOOLS, "mistral").code == "no_call"
    assert tc.check_tool_call("```json\n{'name': 1}\n```", TOOLS, "fenced").code == "invalid_json"


def test_detect_format() -> None:
    assert tc.detect_format(['{"name": "a", "arguments": {}}', "plain text"]) == "json"
    assert tc.detect_format(['[TOOL_CALLS] [{"name": "a", "arguments": {}}]', "hi"]) == "mistral"
    assert tc.detect_format(['ok\n```json\n{"name": "a", "arguments": {}}\n```']) == "fenced"
    assert tc.detect_format(["no calls here", "{not json"]) is None


def test_inferred_tools_require_args_present_in_every_call() -> None:
    texts = ['{"name": "f", "arguments": {"a": 1, "b": 2}}', '{"name": "f", "arguments": {"a": 3}}',
             '{"name": "g", "arguments": {}}', "prose", '{"name": "broken", ']
    tools = tc.infer_tools(texts, "json")
    assert set(tools) == {"f", "g"}
    assert tools["f"].required == ("a",) and tools["g"].required == ()
    box = tc.Toolbox(tools, "inferred", "json")
    assert tc.check_tool_call('{"name": "f", "arguments": {"b": 1}}', box).code == "missing_argument"
    assert tc.check_tool_call('{"name": "h", "arguments": {}}', box).code == "unknown_tool"
    assert tc.check_tool_call('{"name": "f", "arguments": {"a": "any type"}}', box).ok  # no types inferred


def test_toolbox_reads_tools_json_beside_the_dataset_else_infers(tmp_path: Path) -> None:
    texts = ['{"name": "read_note", "arguments": {"path": "a.md"}}']
    data = tmp_path / "d.jsonl"
    box = tc.toolbox(texts, data)
    assert box.source == "inferred" and box.names == ["read_note"] and box.format == "json"
    (tmp_path / "tools.json").write_text(json.dumps(
        [{"type": "function", "function": {"name": "read_note", "parameters": {
            "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
         {"name": "list_tags", "parameters": {"properties": {}, "required": []}}]))
    box = tc.toolbox(texts, data)
    assert box.source == str(tmp_path / "tools.json") and box.names == ["list_tags", "read_note"]
    (tmp_path / "tools.json").write_text("{broken")
    with pytest.raises(ValueError, match="tools.json"):
        tc.toolbox(texts, data)


def test_sample_data_desirable_calls_are_valid_and_malformed_ones_are_not() -> None:
    records = [json.loads(line) for line in (SAMPLE / "notes_tool_use.jsonl").open()]
    good = [r["conversations"][-1]["content"] for r in records if r["label"]]
    bad = [r["conversations"][-1]["content"] for r in records if not r["label"]]
    box = tc.toolbox(good, SAMPLE / "notes_tool_use.jsonl")
    assert box.format == "json" and len(box.names) == 7
    codes = [tc.check_tool_call(t, box).code for t in good]
    assert codes.count("ok") == 438 and set(codes) == {"ok", "no_call"}  # README: 438 calls, 312 answers
    bad_codes = [tc.check_tool_call(t, box).code for t in bad]
    # README: 32 malformed_json (24 broken JSON + 8 with prose around), 31 missing_required_args
    assert bad_codes.count("invalid_json") == 24 and bad_codes.count("extra_text") == 8
    assert bad_codes.count("missing_argument") + bad_codes.count("no_arguments") == 31
    assert bad_codes.count("wrong_type") >= 15
