"""One example at a time: each turn with its role, the completion highlighted, the label badge."""

from __future__ import annotations

import re

from rich.segment import Segment
from textual.content import Content
from textual.events import Resize
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.selection import Selection
from textual.strip import Strip
from textual.visual import Visual
from textual.widget import Widget

from tunedeck.core.data import Example, Problem, completion_text

from ..safe import display, plain

MATCH_STYLE = "bold reverse"  # a search match: legible in every theme and without colour
ROLE_STYLE = {"system": "$text-secondary", "user": "$text-primary", "assistant": "$text-accent", "tool": "$text-warning"}


def label_badge(label: bool) -> Content:
    """" desirable " / " undesirable " as a coloured badge."""
    if label:
        return Content.styled(" desirable ", "bold $background on $success")
    return Content.styled(" undesirable ", "bold $background on $error")


def example_content(ex: Example, index: int, label: bool, modified: bool, problems: list[Problem]) -> Content:
    """`ex` (number `index` in the file's examples) with its current, possibly edited, label and its problems."""
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
    return Content.assemble(*parts)


class ExampleView(ScrollView):
    """Scrollable view of a single example (or a message when there is none), drawn line by line: a new
    example changes only this widget's lines and scroll range, never the screen's layout (one layout fewer
    per j/k than a Static of the example's height inside a scrolling container). The mouse selects text as in a
    Static: the lines carry their offsets in the content (Visual.to_strips), and the content gives the text."""

    DEFAULT_CSS = """
    ExampleView { padding: 0 1; overflow-y: scroll; overflow-x: hidden; }
    """

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.content = Content("")
        self._strips: list[Strip] = []
        self._wrapped_width = -1
        self._match: int | None = None  # character offset of the first search match, to scroll to
        self._scroll_pending = False  # a new content: scroll to its top (or its first match) once wrapped

    def show_message(self, text: str) -> None:
        self._set_content(plain(text, "$text-muted"))

    def show(self, ex: Example, index: int, label: bool, modified: bool, problems: list[Problem],
             find: str = "") -> None:
        """Render `ex` with its current label; each case-insensitive occurrence of `find` highlighted, scrolled
        to the first one."""
        content = example_content(ex, index, label, modified, problems)
        match = None
        if find:
            pattern = re.compile(re.escape(find), re.IGNORECASE)
            content = content.highlight_regex(pattern, style=MATCH_STYLE)
            found = pattern.search(content.plain)
            match = found.start() if found else None
        self._set_content(content, match)

    def _set_content(self, content: Content, match: int | None = None) -> None:
        self.content, self._match = content, match
        self._wrapped_width, self._scroll_pending = -1, True
        self._wrap()
        self.refresh()

    def on_resize(self, _event: Resize) -> None:
        self._wrap()

    def notify_style_update(self) -> None:
        """A new theme or focus style: the lines again in the new colours."""
        super().notify_style_update()
        self._wrapped_width = -1
        self._wrap()

    def _wrap(self) -> None:
        """The content's lines at the current width, the scroll range and position to match (no layout: this
        widget's size does not depend on its content)."""
        width = self.scrollable_content_region.width
        if width <= 0 or width == self._wrapped_width:
            return
        self._wrapped_width = width
        self._strips = Visual.to_strips(self, self.content, width, None, self.visual_style, pad=True)
        self.set_reactive(Widget.virtual_size, Size(width, len(self._strips)))
        self._scroll_update(self.virtual_size)
        if self._scroll_pending:
            self._scroll_pending = False
            top = 0
            if self._match:
                top = max(0, len(self.content[: self._match].wrap(width)) - 3)  # the match's line, two above it
            self.scroll_to(y=top, animate=False, immediate=True)

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        """The selected text (Widget's own reads `render()`, which a line-drawn widget leaves empty)."""
        return selection.extract(self.content.plain), "\n"

    def selection_updated(self, selection: Selection | None) -> None:
        """The lines again with the selection drawn (Visual.to_strips styles it), at the same scroll position."""
        self._wrapped_width = -1
        self._wrap()
        self.refresh()

    def render_line(self, y: int) -> Strip:
        index = y + self.scroll_offset.y
        width = self.scrollable_content_region.width
        if index < len(self._strips):
            return self._strips[index].crop_extend(0, width, self.visual_style.rich_style)
        return Strip([Segment(" " * width, self.visual_style.rich_style)], width)
