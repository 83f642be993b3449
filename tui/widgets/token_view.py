"""The rendered chat template token by token: every trained span highlighted (the completion, and with
SFT's data.train_on = "all_assistant" the earlier assistant turns), the rest of the prompt dimmed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from tunedeck.core.data import Example

from ..safe import display, plain
from .busy import BusyLine

if TYPE_CHECKING:
    from tunedeck.core.template import Encoded

# Alternating shades show where one token ends and the next begins.
PROMPT_STYLES = ("$text-muted on $boost", "$text-muted")
COMPLETION_STYLES = ("bold $foreground on $success-muted", "bold $foreground on $success 50%")
CUT_STYLE = "strike $text-disabled"


def _piece(text: str) -> str:
    return display(text).replace("\n", "↵\n") or "∅"


class TokenView(VerticalScroll):
    """Token view of one example, with counts and what truncation at max_seq_len would cut."""

    DEFAULT_CSS = """
    TokenView { padding: 0 1; }
    TokenView > #token-summary { margin-bottom: 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.encoded: Encoded | None = None
        self.highlighted = 0  # completion tokens shown highlighted

    def compose(self) -> ComposeResult:
        yield BusyLine(id="token-busy")
        yield Static(id="token-summary")
        yield Static(id="token-body")

    def show_message(self, text: str, busy: bool = False) -> None:
        """A loading message (with a spinner when `busy`) or an explanation instead of tokens."""
        self.query_one(BusyLine).message = text if busy else ""
        self.query_one("#token-summary", Static).update("" if busy else plain(text, "$text-warning"))
        self.query_one("#token-body", Static).update("")

    def show(self, ex: Example, tokenizer: Any, max_seq_len: int, train_on: str = "last") -> None:
        """Render `ex` (with its tools) through the tokenizer's chat template; `train_on` as SFT trains it."""
        from tunedeck.core.template import TemplateError, encode_example, token_pieces, truncate  # Jinja: not at start

        self.query_one(BusyLine).message = ""
        try:
            enc = encode_example(tokenizer, ex, train_on=train_on)
        except TemplateError as e:  # a hostile or broken template: its file and the limit hit
            self.show_message(str(e))
            return
        bos = getattr(tokenizer, "bos_token_id", None)
        cut = truncate(enc, max_seq_len, bos)
        pieces = token_pieces(tokenizer, enc.ids)
        keep_bos = 1 if bos is not None and enc.ids[:1] == [bos] else 0
        cut_prompt = range(keep_bos, keep_bos + cut.truncated_prompt_tokens)
        kept_completion = len(cut.ids) - cut.prompt_len
        parts: list[tuple[str, str]] = []
        self.highlighted = 0
        trained = enc.trained
        for i, piece in enumerate(pieces):
            if i < enc.prompt_len and trained[i] and i not in cut_prompt:
                style = COMPLETION_STYLES[i % 2]
                self.highlighted += 1
            elif i < enc.prompt_len:
                style = CUT_STYLE if i in cut_prompt else PROMPT_STYLES[i % 2]
            elif cut.completion_too_long and i - enc.prompt_len >= kept_completion:
                style = CUT_STYLE
            else:
                style = COMPLETION_STYLES[i % 2]
                self.highlighted += 1
            parts.append((_piece(piece), style))
        self.encoded = enc
        self.query_one("#token-summary", Static).update(self._summary(enc, cut, max_seq_len))
        self.query_one("#token-body", Static).update(Content.assemble(*parts))

    @staticmethod
    def _summary(enc: Encoded, cut: Encoded, max_seq_len: int) -> Content:
        earlier = sum(b - a for a, b in enc.earlier)
        counts = Content.assemble(
            ("prompt ", "$text-muted"), (str(enc.prompt_len), "bold"),
            (" · completion (trained) ", "$text-muted"), (str(enc.completion_len), "bold $text-success"),
            *([(" · earlier assistant turns (trained) ", "$text-muted"), (str(earlier), "bold $text-success"),
               (f" in {len(enc.earlier)} span(s)", "$text-muted")] if enc.earlier else []),
            (" · total ", "$text-muted"), (str(len(enc.ids)), "bold"), " tokens\n",
        )
        if len(enc.ids) <= max_seq_len:
            note = (f"fits data.max_seq_len = {max_seq_len}", "$text-muted")
        elif cut.completion_too_long:
            lost = enc.completion_len - (len(cut.ids) - cut.prompt_len)
            note = (f"over data.max_seq_len = {max_seq_len}: the whole prompt and {lost} completion "
                    "tokens would be cut (struck through)", "bold $text-error")
        else:
            note = (f"over data.max_seq_len = {max_seq_len}: the first {cut.truncated_prompt_tokens} prompt "
                    "tokens would be cut (struck through)", "bold $text-warning")
        return counts + Content.styled(*note)
