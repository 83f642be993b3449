"""What every screen of the app has: typed access to the app and to the state the screens share."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import events
from textual._context import NoActiveAppError
from textual.geometry import Size
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget

from ..band_compositor import make_compositor

if TYPE_CHECKING:
    from ..app import TunedeckApp
    from ..state import AppState


class TunedeckScreen(Screen):
    """A screen of `TunedeckApp`: reads the shared state as `state`, changes it only through
    `tapp.update_state` (which tells every subscriber of `tapp.state_changed_signal`)."""

    #: Textual's Screen repaints every cell on each change of focus; the widgets that gain and lose it (and their
    #: :focus-within ancestors) are restyled and repaint themselves, so a Tab redraws two fields, not the screen.
    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    def __init__(self) -> None:
        super().__init__()
        self._compositor = make_compositor()  # repaints the changed areas of a frame, not the box around them
        # A new Screen starts at -1, which makes Textual restyle every mounted screen (Config's form: 240 widgets)
        # on each first visit of a mode. The app loads all its CSS at start (app._stylesheets), a widget's own
        # CSS applies as it mounts; only a change of theme since then needs that pass, and it bumps the count.
        try:
            self._css_update_count = self.app._css_update_count
        except NoActiveAppError:
            pass

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        """Runs before Textual's own handler: a switch of mode restyles every widget of the screen shown (Config:
        hundreds of ms) although nothing changed while it was hidden; a theme change since is restyled by the
        count above (as Textual itself does on popping a screen, which restyles only for a transparent one)."""
        event.refresh_styles = False

    def _screen_resized(self, size: Size) -> None:
        """Textual passes on every Resize the terminal reports, an unchanged size too (two at start-up), and lays
        the whole screen out and repaints it for each (the Data screen: 60-100 ms); only a new size is laid out
        here (a layout a widget asked for runs on its own refresh)."""
        if size != self._compositor.size:
            super()._screen_resized(size)

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
