"""The Train screen's Samples panel: the adapter's answers to one held-out prompt, step by step."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from ..safe import display
from .train_history import RunHistory

#: An answer's mark: a well-formed tool call, a malformed one, or plain text where no call was due.
MARKS = {True: ("✓ call", "$success"), False: ("✗ call", "$error"), None: ("· text", "$text-muted")}


class SamplesPanel(VerticalScroll, can_focus=False):
    """The selected prompt's question and its answers, oldest first; shown once a run has `sample` events (the
    screen then has the class `-samples`). Model output and questions are shown literally (never markup, control characters made visible)."""

    SCOPED_CSS = False  # the narrow rules follow the Train screen's classes
    DEFAULT_CSS = """
    SamplesPanel {
        height: 10;
        border: round $panel;
        border-title-color: $text-muted;
        padding: 0 1;
        display: none;
    }
    SamplesPanel > Static {
        height: auto;
    }
    /* Narrow (under 100 columns): the panel takes the event log's place once the run has samples */
    TrainScreen.-narrow SamplesPanel {
        height: 6;
        border: none;
        border-top: solid $panel;
        border-title-align: left;
    }
    TrainScreen.-narrow.-samples #log {
        display: none;
    }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shown: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="samples-text", markup=False)

    @staticmethod
    def prompts(history: RunHistory) -> list[int]:
        """The prompt indices that have answers, in order."""
        return sorted(i for i, answers in history.samples.items() if answers)

    def show(self, history: RunHistory, selected: int) -> None:
        """Draw the answers of prompt `selected` (an index into `prompts`); hidden while there are none."""
        prompts = self.prompts(history)
        self.display = bool(prompts)
        if not prompts:
            return
        prompt = prompts[selected % len(prompts)]
        answers = history.samples[prompt]
        key = (prompt, len(prompts), len(answers), answers[-1])
        if key == self._shown:
            return
        self._shown = key
        self.border_title = f"Samples · prompt {selected % len(prompts) + 1}/{len(prompts)} · [ ] cycle"
        parts: list[str | tuple[str, str]] = [(f"Q: {display(history.questions.get(prompt, ''))}", "$text-muted")]
        for a in answers:
            mark, style = MARKS[a.valid]
            tokens = f", {a.tokens} tokens" if a.tokens is not None else ""
            parts += ["\n\n", (f"step {a.step}", "bold"), " ", (mark, style), (tokens, "$text-muted"), "\n",
                      display(a.text)]
        self.query_one("#samples-text", Static).update(Content.assemble(*parts))
        self.scroll_end(animate=False)
