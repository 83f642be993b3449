"""A scrolling conversation: one widget per turn; a reply grows as its chunks arrive."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from ..safe import plain

ROLE_LABELS = {"user": "you", "assistant": "model", "system": "system", "tool": "tool"}


class ChatMessage(Static):
    """One turn, shown literally (model output is untrusted: never markup, controls escaped)."""

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__(classes=f"chat-msg -{role if role in ROLE_LABELS else 'other'}")
        self.role = role
        self.text = text

    def on_mount(self) -> None:
        self._show()

    def append(self, text: str) -> None:
        self.text += text
        self._show()

    def _show(self) -> None:
        self.update(plain(f"{ROLE_LABELS.get(self.role, self.role)} › {self.text}"))


class ChatPane(VerticalScroll):
    """The turns of one conversation (the adapter's, or the base model's)."""

    def __init__(self, title: str, *, id: str) -> None:
        super().__init__(id=id, classes="chat-pane")
        self.border_title = title

    def add(self, role: str, text: str = "") -> ChatMessage:
        message = ChatMessage(role, text)
        self.mount(message)
        self.scroll_end(animate=False)
        return message

    def show(self, messages: list[dict[str, str]]) -> None:
        """Replace what is shown with `messages`."""
        self.remove_children()
        for m in messages:
            self.add(str(m.get("role", "?")), str(m.get("content", "")))

    @property
    def last(self) -> ChatMessage | None:
        found = self.query(ChatMessage)
        return found.last() if found else None

    @property
    def texts(self) -> list[str]:
        return [m.text for m in self.query(ChatMessage)]
