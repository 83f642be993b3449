"""One example at a time: each turn with its role, the completion highlighted, the label badge."""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from tunedeck.core.data import Example, Problem, completion_text

from ..safe import display, plain

MATCH_STYLE = "bold reverse"  # a search match: legible in every theme and without colour
ROLE_STYLE = {"system": "$text-secondary", "user": "$text-primary", "assistant": "$text-accent", "tool": "$text-warning"}


def label_badge(label: bool) -> Content:
    """" desirable " / " undesirable " as a coloured badge."""
    if label:
        return Content.styled(" desirable ", "bold $background on $success")
    return Content.styled(" undesirable ", "bold $background on $error")


class ExampleView(VerticalScroll):
    """Scrollable view of a single example (or a message when there is none)."""

    DEFAULT_CSS = """
    ExampleView { padding: 0 1; overflow-y: scroll; }  /* a scrollbar that comes and goes re-lays out each j/k */
    ExampleView > #example-body { width: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="example-body")

    def show_message(self, text: str) -> None:
        self.query_one("#example-body", Static).update(plain(text, "$text-muted"))

    def show(self, ex: Example, index: int, label: bool, modified: bool, problems: list[Problem],
             find: str = "") -> None:
        """Render `ex` (number `index` in the file's examples) with its current, possibly edited, label; each
        case-insensitive occurrence of `find` highlighted, scrolled to the first one."""
        parts: list[Content | tuple[str, str] | str] = [
            (f"#{index + 1}", "bold"), (f" · line {ex.line} · ", "$text-muted"), label_badge(label),
        ]
        if modified:
            parts.append((" ● modified (unsaved)", "bold $text-warning"))
        parts.append("\n")
        for p in problems:
            error = p.severity == "error"
            where = f"{p.field}: " if p.field else ""
            parts.append(plain(f"{'✗' if error else '⚠'} {where}{p.message}\n", "$text-error" if error else "$text-warning"))
        for m in ex.prompt:
            parts.append((f"\n── {m['role']} ──\n", f"bold {ROLE_STYLE.get(m['role'], '')}"))
            parts.append(display(completion_text(m) if m["role"] == "assistant" else m["content"]) + "\n")
        parts.append(("\n── assistant · completion (trained) ──\n", "bold $text-success"))
        parts.append(plain(ex.completion, "$foreground on $success-muted"))
        content = Content.assemble(*parts)
        first = None
        if find:
            pattern = re.compile(re.escape(find), re.IGNORECASE)
            content = content.highlight_regex(pattern, style=MATCH_STYLE)
            match = pattern.search(content.plain)
            first = match.start() if match else None
        self.query_one("#example-body", Static).update(content)
        self.scroll_home(animate=False)
        if first:
            self.call_after_refresh(self._scroll_to_match, content, first)

    def _scroll_to_match(self, content: Content, offset: int) -> None:
        """Scroll so that the line holding character `offset` of `content` is near the top."""
        width = self.query_one("#example-body", Static).content_size.width
        if width > 0:
            line = len(content[:offset].wrap(width)) - 1
            self.scroll_to(y=max(0, line - 2), animate=False)
