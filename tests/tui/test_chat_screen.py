"""The Chat screen: streamed replies shown literally (a fake stream), then the real demo model's adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_chat import make_adapter_run
from tests.tui.conftest import make_train_workspace as make_workspace
from tests.tui.conftest import open_app, text_of, wait_for
from tunedeck.core import chat
from tunedeck.core.data import Example
from tunedeck.tui.screens.chat import BASE_ONLY, ChatScreen
from tunedeck.tui.widgets.chat_pane import ChatMessage, ChatPane

HOSTILE = ["[bold red]boom[/] ", "\x1b[2J\x1b]0;title\x07", "[link=http://x]y[/link]"]


async def open_chat(app, pilot) -> ChatScreen:
    await app.switch_mode("chat")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    return screen


def pane(screen: ChatScreen, name: str) -> ChatPane:
    return screen.query_one(f"#{name}-pane", ChatPane)


async def test_streamed_markup_and_escapes_show_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[dict[str, str]]] = []

    def fake_stream(model, tokenizer, messages, max_tokens=256, temperature=0.7, top_p=1.0, tools=None):
        seen.append(list(messages))
        for i, text in enumerate(HOSTILE):
            yield chat.Chunk(text, 12.5, "stop" if i == len(HOSTILE) - 1 else None)

    monkeypatch.setattr(chat, "stream_reply", fake_stream)
    monkeypatch.setattr(chat, "load_chat_model", lambda base, adapter: chat.ChatModel(None, None, base, adapter))
    ws = make_workspace(tmp_path / "ws")
    app = open_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_chat(app, pilot)
        assert screen.query_one("#source").value == BASE_ONLY  # no runs yet
        await pilot.press(*"hello", "enter")
        await wait_for(pilot, lambda: not screen.busy, 10, "the reply")
        reply = pane(screen, "adapter").last
        assert reply is not None and reply.text == "".join(HOSTILE)
        shown = reply.render()
        assert "[bold red]boom[/]" in str(shown) and "[link=http://x]y[/link]" in str(shown)
        assert "␛[2J" in str(shown) and "\x1b" not in str(shown) and not list(shown.spans)
        assert "12.5 tokens/s" in text_of(screen, "#chat-status")
        assert screen.histories["adapter"][-1] == {"role": "assistant", "content": "".join(HOSTILE)}

        await pilot.press(*"again", "enter")
        await wait_for(pilot, lambda: not screen.busy, 10, "the second reply")
        assert [m["role"] for m in seen[-1]] == ["user", "assistant", "user"]  # the conversation is kept

        app.state.current_example = Example(
            prompt=[{"role": "system", "content": "be [i]brief[/i]"}, {"role": "user", "content": "2+2?"}],
            completion="[b]4[/b]", label=False, line=7, raw="")
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: not screen.busy, 10, "the example's reply")
        assert seen[-1] == app.state.current_example.prompt
        reference = text_of(screen, "#reference")
        assert "undesirable" in reference and "[b]4[/b]" in reference
        assert [m.role for m in pane(screen, "adapter").query(ChatMessage)] == ["system", "user", "assistant"]

        await pilot.press("ctrl+l")
        await pilot.pause()
        assert pane(screen, "adapter").texts == [] and screen.histories["adapter"] == []
        assert not screen.query_one("#reference").display


async def test_system_prompt_tools_and_a_native_call_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    seen: list[tuple[list, list | None]] = []
    reply = '[TOOL_CALLS] [{"name": "read_note", "arguments": {"path": "a.md"}, "id": "abc123def"}]'

    def fake_stream(model, tokenizer, messages, max_tokens=256, temperature=0.7, top_p=1.0, tools=None):
        seen.append((list(messages), tools))
        yield chat.Chunk(reply, 9.0, "stop")

    monkeypatch.setattr(chat, "stream_reply", fake_stream)
    monkeypatch.setattr(chat, "load_chat_model", lambda base, adapter: chat.ChatModel(None, None, base, adapter))
    ws = make_workspace(tmp_path / "ws")
    schemas = json.loads((Path(__file__).parents[2] / "sample_data" / "tools.json").read_text())
    (tmp_path / "tools.json").write_text(json.dumps(schemas))
    app = open_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_chat(app, pilot)
        screen.query_one("#system").value = "Use the note tools."
        screen.query_one("#tools").value = str(tmp_path / "tools.json")
        screen.query_one("#prompt").focus()
        await pilot.press(*"open a.md", "enter")
        await wait_for(pilot, lambda: not screen.busy, 10, "the reply")
        messages, tools = seen[-1]
        assert messages == [{"role": "system", "content": "Use the note tools."}, {"role": "user", "content": "open a.md"}]
        assert [t["function"]["name"] for t in tools] == [t["name"] for t in schemas]
        assert pane(screen, "adapter").texts[-1] == 'tool call read_note({"path": "a.md"}) — valid'
        assert screen.histories["adapter"][-1]["tool_calls"][0]["function"]["arguments"] == {"path": "a.md"}
        await pilot.press(*"and b", "enter")
        await wait_for(pilot, lambda: not screen.busy, 10, "the second reply")
        assert seen[-1][0][2]["tool_calls"][0]["id"] == "abc123def"  # sent back as a structured call


@pytest.mark.slow
async def test_real_adapter_streams_and_compares_with_the_base(tmp_path: Path, demo_model: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    run_dir = make_adapter_run(ws)
    app = open_app(ws)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_chat(app, pilot)
        assert screen.query_one("#source").value == str(run_dir)
        screen.query_one("#max-tokens").value = "8"
        screen.query_one("#temperature").value = "0"
        await pilot.press(*"hi", "enter")
        await wait_for(pilot, lambda: not screen.busy, 60, "the adapter's reply")
        first = pane(screen, "adapter").last.text
        assert first and "tokens/s" in text_of(screen, "#chat-status")

        await pilot.press("ctrl+b")
        await pilot.pause()
        assert screen.compare and pane(screen, "base").display
        await pilot.press(*"hi", "enter")
        await wait_for(pilot, lambda: not screen.busy, 60, "both replies")
        base_texts, adapter_texts = pane(screen, "base").texts, pane(screen, "adapter").texts
        assert len(adapter_texts) == 4  # hi, reply, hi, reply
        # the base pane holds only the base model's conversation: none of the adapter's earlier replies
        assert base_texts == ["hi", base_texts[1]] and first not in base_texts
        assert [m["role"] for m in screen.histories["base"]] == ["user", "assistant"]
        assert screen.histories["base"][1]["content"] == base_texts[1] != adapter_texts[3]


async def test_run_selector_names_a_run_readably_at_80_columns(tmp_path: Path) -> None:
    from tests.tui.conftest import screen_text
    from tunedeck.tui.screens.chat import run_label

    assert run_label("20260101-000001-kto") == "01-01 00:00 kto" and run_label("my-run") == "my-run"
    ws = make_workspace(tmp_path / "ws")
    run = ws / "runs" / "20260101-000001-kto"
    (run / "adapters").mkdir(parents=True)
    (run / "config.toml").write_text((ws / "tunedeck.toml").read_text())
    (run / "adapters" / "adapters.safetensors").write_bytes(b"")
    app = open_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_chat(app, pilot)
        await wait_for(pilot, lambda: "01-01 00:00 kto · adapters" in screen_text(app), what="the run's name")
        assert "max" in screen_text(app) and "256" in screen_text(app)
