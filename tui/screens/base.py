"""What every screen of the app has: typed access to the app and to the state the screens share."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen

if TYPE_CHECKING:
    from ..app import TunedeckApp
    from ..state import AppState


class TunedeckScreen(Screen):
    """A screen of `TunedeckApp`: reads the shared state as `state`, changes it only through
    `tapp.update_state` (which tells every subscriber of `tapp.state_changed_signal`)."""

    @property
    def tapp(self) -> TunedeckApp:
        return cast("TunedeckApp", self.app)

    @property
    def state(self) -> AppState:
        return self.tapp.state

    def set_unsaved(self, mode: str, unsaved: bool) -> None:
        """Mark the screen of `mode` as holding unsaved edits (or not); quitting asks about them."""
        dirty = self.state.dirty
        if (mode in dirty) != unsaved:
            self.tapp.update_state(dirty=dirty | {mode} if unsaved else dirty - {mode})
