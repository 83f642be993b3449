"""The Chat screen: talk to a run's adapter (or a checkpoint), side by side with the base model if asked.

A system prompt and a tool-schema file (the run's data's tools by default, editable) go through the
chat template with every prompt; a ``[TOOL_CALLS]`` reply is shown as its calls (name, arguments,
schema-valid or not) and kept in the history as structured calls.

Generation runs in a thread worker that posts reply chunks as they stream in; the model is loaded
once per source and the base model is the same weights with the adapter switched off.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from tunedeck.core import chat, data, toolcalls
from tunedeck.core.model import ADAPTER_FILE

from ..messages import ChatChunk, ChatReplyDone, ChatStatus
from ..safe import display, plain
from ..widgets.chat_pane import ChatPane
from ..widgets.key_footer import KeyFooter
from .base import TunedeckScreen

BASE_ONLY = "<base model>"
PANES = {"base": "#base-pane", "adapter": "#adapter-pane"}


RUN_ID = re.compile(r"(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})-(.+)")  # YYYYMMDD-HHMMSS-<method...>
NARROW = 100  # below this width the settings' labels are short and their fields narrow


def run_label(name: str) -> str:
    """A run directory's name as the selector shows it: `20260101-000001-kto` -> `01-01 00:00 kto` (its date,
    time and method); other names as they are."""
    m = RUN_ID.fullmatch(name)
    return f"{m[2]}-{m[3]} {m[4]}:{m[5]} {m[7]}" if m else name


def chat_sources(runs_root: Path) -> list[tuple[str, str]]:
    """(label, path) for every run with adapters and every verified checkpoint, newest run first."""
    out: list[tuple[str, str]] = []
    if not runs_root.is_dir():
        return out
    for run in sorted((p for p in runs_root.iterdir() if (p / "config.toml").is_file()), reverse=True):
        if (run / "adapters" / ADAPTER_FILE).is_file():
            out.append((f"{run_label(run.name)} · adapters", str(run)))
        ckpts = run / "checkpoints"
        if ckpts.is_dir():
            for ckpt in sorted((c for c in ckpts.glob("step-*") if c.is_dir() and not c.name.endswith(".tmp")),
                               reverse=True):
                if (ckpt / "manifest.json").is_file():
                    step = ckpt.name.removeprefix("step-").lstrip("0") or "0"
                    out.append((f"{run_label(run.name)} · step {step}", str(ckpt)))
    return out


class ChatScreen(TunedeckScreen):
    CSS_PATH = "chat.tcss"
    BINDINGS = [
        Binding("ctrl+b", "compare", "Compare", priority=True, id="chat.compare",
                tooltip="Side by side: each prompt also goes to the base model with the adapter off"),
        Binding("ctrl+l", "clear", "Clear", priority=True, id="chat.clear", tooltip="Forget the conversation"),
        Binding("ctrl+e", "example", "Example", priority=True, id="chat.example",
                tooltip="Ask the Data screen's selected example; show the dataset's answer and label beside"),
        Binding("escape", "cancel", "Stop / leave", id="chat.cancel",
                tooltip="Stop the reply being generated; when idle, leave the prompt so 1-5 switch screens"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.compare = False
        self.busy = False
        self.histories: dict[str, list[dict]] = {"base": [], "adapter": []}
        self.schemas: list[dict] | None = None  # the tool schemas of the last prompt sent
        self._turn = 0
        self._loaded: tuple[str, chat.ChatModel] | None = None
        self._generating = threading.Lock()  # one generation at a time on the shared model

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-settings"):
            yield Select([], prompt="adapter", allow_blank=True, id="source")
            yield Label("temperature", id="temperature-label")
            yield Input("0.7", type="number", id="temperature", tooltip="Sampling temperature (0: greedy)")
            yield Label("top-p")
            yield Input("1.0", type="number", id="top-p", tooltip="Nucleus sampling: the top-p probability mass")
            yield Label("max tokens", id="max-tokens-label")
            yield Input("256", type="integer", id="max-tokens", tooltip="The longest reply, in tokens")
        with Horizontal(id="chat-context"):
            yield Input(placeholder="system prompt (optional)", id="system")
            yield Input(placeholder="tool schemas: a tools.json (optional)", id="tools")
        with Horizontal(id="chat-panes"):
            yield ChatPane("base model (adapter off)", id="base-pane")
            yield ChatPane("adapter", id="adapter-pane")
            yield Static(id="reference")
        yield Static(id="chat-status")
        yield Input(placeholder="Message (enter sends · ctrl+b compare · ctrl+e example · ctrl+l clear)", id="prompt")
        yield KeyFooter()

    def on_resize(self, event: events.Resize) -> None:
        """Short labels on a narrow terminal, so that the run selector keeps room for a run's name."""
        narrow = event.size.width < NARROW
        self.set_class(narrow, "-narrow")
        self.query_one("#temperature-label", Label).update("temp" if narrow else "temperature")
        self.query_one("#max-tokens-label", Label).update("max" if narrow else "max tokens")

    def on_mount(self) -> None:
        self.query_one("#base-pane").display = False
        self.query_one("#reference").display = False
        self.query_one("#prompt", Input).focus()

    def on_screen_resume(self) -> None:
        self.refresh_sources()
        tools = self.query_one("#tools", Input)
        if not tools.value:
            tools.value = self._data_tools()

    def _data_tools(self) -> str:
        """The tool schemas of the run's data: data.tools, else a tools.json beside the dataset ("" if none)."""
        d = self.state.data_path.parent
        path = d / self.state.config.data.tools if self.state.config.data.tools else d / toolcalls.TOOLS_FILE
        return str(path) if path.is_file() else ""

    def _tools(self) -> tuple[bool, list[dict] | None]:
        """(ok, schemas) from the tools field; a bad file is reported and nothing is sent."""
        path = self.query_one("#tools", Input).value.strip()
        if not path:
            return True, None
        try:
            return True, data.load_tools(path)
        except data.DataError as e:
            self.notify(display(str(e)), severity="error", markup=False)
            return False, None

    # --- sources -----------------------------------------------------------------------------

    def refresh_sources(self) -> None:
        """Offer every run's adapters and checkpoints (and the bare base model); keep the choice."""
        select = self.query_one("#source", Select)
        sources = chat_sources(self.state.runs_root)
        values = [v for _, v in sources] + [BASE_ONLY]
        current = select.value
        options = [(Text(display(label)), value) for label, value in sources]
        options.append((Text(display(f"base model · {self.state.model}")), BASE_ONLY))
        select.set_options(options)
        active = self.state.active_run
        if current in values:
            select.value = current
        elif active is not None and str(active) in values:
            select.value = str(active)
        else:
            select.value = values[0]

    def _target(self, source: str) -> tuple[str, Path | None]:
        if source == BASE_ONLY:
            return self.state.model, None
        return chat.resolve_target(Path(source))

    # --- sending -----------------------------------------------------------------------------

    @on(Input.Submitted, "#prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.send([{"role": "user", "content": text}]):
            event.input.value = ""

    def send(self, messages: list[dict], tools: list[dict] | None = None) -> bool:
        """Add `messages` to the conversation(s) and stream the replies, with the system prompt and the
        tool schemas (`tools`, else the tools field's). False if nothing was sent."""
        if self.busy:
            self.notify("Still answering; escape stops it.", severity="warning")
            return False
        sampling = self._sampling()
        source = self.query_one("#source", Select).value
        ok, from_field = self._tools()
        if sampling is None or not isinstance(source, str) or not ok:
            return False
        self.schemas = tools or from_field
        panes = ["base", "adapter"] if self.compare else ["adapter"]
        for name in panes:
            pane = self.query_one(PANES[name], ChatPane)
            for m in messages:
                self.histories[name].append(dict(m))
                pane.add(m["role"], data.completion_text(m) if m["role"] == "assistant" else m["content"])
            pane.add("assistant")
        self.busy = True
        self._turn += 1
        system = self.query_one("#system", Input).value.strip()
        start = [{"role": "system", "content": system}] if system else []
        histories = {k: start + copy.deepcopy(v) for k, v in self.histories.items()}
        self._generate(self._turn, source, panes, histories, sampling, self.schemas)
        return True

    def _sampling(self) -> dict[str, float | int] | None:
        try:
            temperature = float(self.query_one("#temperature", Input).value)
            top_p = float(self.query_one("#top-p", Input).value)
            max_tokens = int(self.query_one("#max-tokens", Input).value)
        except ValueError:
            self.notify("temperature, top-p and max tokens must be numbers", severity="error")
            return None
        if temperature < 0 or not 0 < top_p <= 1 or max_tokens < 1:
            self.notify("Need temperature ≥ 0, 0 < top-p ≤ 1 and max tokens ≥ 1.", severity="error")
            return None
        return {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, turn: int, source: str, panes: list[str], histories: dict[str, list[dict]],
                  sampling: dict[str, float | int], tools: list[dict] | None) -> None:
        worker = get_current_worker()
        with self._generating:
            try:
                model = self._model_for(turn, source)
                for pane in panes:
                    self._stream(turn, pane, model, histories[pane], sampling, tools, lambda: worker.is_cancelled)
            except (chat.ChatError, ValueError, RuntimeError, OSError) as e:
                self.post_message(ChatStatus(turn, f"error: {e}", finished=True, error=True))
                return
        self.post_message(ChatStatus(turn, "", finished=True))

    def _model_for(self, turn: int, source: str) -> chat.ChatModel:
        """The model for `source`, loading it (and dropping the previous one) if needed. A run that
        is still training publishes new adapters at each checkpoint: those are reloaded."""
        base, adapter = self._target(source)
        try:
            stamp = (adapter / ADAPTER_FILE).stat().st_mtime_ns if adapter else 0
        except OSError:
            stamp = 0
        key = f"{base}\0{adapter}\0{stamp}"
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1]
        self._loaded = None
        self.post_message(ChatStatus(turn, f"loading {base}" + (f" with {adapter}" if adapter else "") + "…"))
        model = chat.load_chat_model(base, adapter)
        self._loaded = (key, model)
        return model

    def _stream(self, turn: int, pane: str, model: chat.ChatModel, history: list[dict],
                sampling: dict[str, float | int], tools: list[dict] | None, cancelled: Callable[[], bool]) -> None:
        """Post the reply in chunks, at most ~20 a second."""
        pending, speed, posted = "", 0.0, time.monotonic()
        self.post_message(ChatStatus(turn, f"{pane}: generating…"))
        with closing(model.reply(history, adapter=pane == "adapter", tools=tools, **sampling)) as chunks:
            for chunk in chunks:
                if cancelled():
                    break
                pending += chunk.text
                speed = chunk.tokens_per_sec
                if time.monotonic() - posted >= 0.05:
                    self.post_message(ChatChunk(turn, pane, pending, speed))
                    pending, posted = "", time.monotonic()
        self.post_message(ChatChunk(turn, pane, pending, speed))
        self.post_message(ChatReplyDone(turn, pane))

    def on_chat_chunk(self, message: ChatChunk) -> None:
        if message.turn != self._turn:
            return
        pane = self.query_one(PANES[message.pane], ChatPane)
        if pane.last is not None and message.text:
            pane.last.append(message.text)
            pane.scroll_end(animate=False)
        self.query_one("#chat-status", Static).update(
            plain(f"{message.pane}: {message.tokens_per_sec:.1f} tokens/s"))

    def on_chat_reply_done(self, message: ChatReplyDone) -> None:
        if message.turn != self._turn:
            return
        pane = self.query_one(PANES[message.pane], ChatPane)
        text = pane.last.text if pane.last else ""
        self.histories[message.pane].append(toolcalls.reply_message(text))
        calls = toolcalls.describe_calls(text, toolcalls.specs(self.schemas) if self.schemas else None)
        if calls:
            pane.add("tool", "\n".join(calls))

    def on_chat_status(self, message: ChatStatus) -> None:
        if message.turn != self._turn:
            return
        if message.finished:
            self.busy = False
        if message.text:
            self.query_one("#chat-status", Static).update(plain(message.text))
        if message.error:
            self.notify(display(message.text), severity="error", markup=False)

    # --- actions -----------------------------------------------------------------------------

    def action_compare(self) -> None:
        if self.busy:
            self.notify("Still answering; compare switches once the reply is done (escape stops it).",
                        severity="warning")
            return
        self.compare = not self.compare
        base = self.query_one("#base-pane", ChatPane)
        if self.compare:  # the base pane holds only the base model's own conversation, from the next prompt on
            self.histories["base"] = []
            base.show(self.histories["base"])
        base.display = self.compare
        self.notify("Compare: from the next prompt, each prompt also goes to the base model (adapter off), "
                    "in a conversation of its own." if self.compare else "Compare off.")

    def action_cancel(self) -> None:
        """Stop the reply being generated; with none, leave the prompt (so 1-5 switch screens)."""
        if self.busy:
            self.workers.cancel_group(self, "generate")
        elif isinstance(self.focused, Input):
            self.query_one("#adapter-pane", ChatPane).focus()

    def action_clear(self) -> None:
        self.workers.cancel_group(self, "generate")
        self._turn += 1
        self.busy = False
        self.histories = {"base": [], "adapter": []}
        for selector in PANES.values():
            self.query_one(selector, ChatPane).remove_children()
        self.query_one("#reference").display = False
        self.query_one("#chat-status", Static).update("")

    def action_example(self) -> None:
        example = self.state.current_example
        if example is None:
            self.notify("Select an example on the Data screen (1) first.", severity="warning")
            return
        if not example.prompt:
            self.notify("This example has no prompt (plain text format).", severity="warning")
            return
        self.action_clear()
        reference = self.query_one("#reference", Static)
        label = "desirable" if example.label else "undesirable"
        reference.update(plain(f"dataset answer ({label}, line {example.line})\n\n{example.completion}"))
        reference.display = True
        self.send([dict(m) for m in example.prompt], example.tools)
