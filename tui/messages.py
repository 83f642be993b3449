"""The app's messages: what workers and screens post upwards (messages up, attributes down).

A widget's own messages stay nested in the widget, as Textual's are (`ProblemsList.Jump`, like
`OptionList.OptionSelected`): they are part of that widget's API and their handler names carry its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from tunedeck.core.config import Config
    from tunedeck.core.events import Event
    from tunedeck.core.runs import RunInfo


@dataclass
class ConfigApplied(Message):
    """The Config form holds a valid config (posted on every valid change); the app makes it the one in use."""

    config: Config


@dataclass
class ChatChunk(Message):
    """The next piece of the reply of turn `turn` in `pane` ("base" or "adapter"), and the current speed."""

    turn: int
    pane: str
    text: str
    tokens_per_sec: float


@dataclass
class ChatReplyDone(Message):
    """The reply of turn `turn` in `pane` is complete."""

    turn: int
    pane: str


@dataclass
class ChatStatus(Message):
    """A line for the Chat screen's status bar; `finished`: the turn is over (`error`: it failed, `text` says why)."""

    turn: int
    text: str
    finished: bool = False
    error: bool = False


@dataclass
class RunsListed(Message):
    """Every run of the workspace, newest first, as the Runs screen's scan read them."""

    infos: list[RunInfo]


@dataclass
class RunLaunched(Message):
    """A trainer was started (or failed to start: `run_dir` None, `error` says why); `started`: it is alive."""

    run_dir: Path | None
    started: bool
    error: str = ""


@dataclass
class RunStopped(Message):
    """A graceful stop finished: `text` says how, `ok` whether it worked."""

    text: str
    ok: bool


@dataclass
class TrainEvents(Message):
    """A batch of events from `run_dir` (in file order). `caught_up`: the reader reached the end of the file
    (the whole history so far has been posted). `attach` tells the batches of one attach apart."""

    run_dir: Path
    events: list[Event]
    caught_up: bool
    attach: int
