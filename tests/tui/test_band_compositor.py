"""The compositor that repaints changed areas band by band hands over the same frames as Textual's own."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from textual._compositor import ChopsUpdate, Compositor
from textual.geometry import Region

from tests.tui.conftest import make_app, make_workspace, settle
from tunedeck.tui.band_compositor import BandCompositor, bands


def test_bands_merge_regions_whose_lines_touch() -> None:
    regions = {Region(2, 10, 60, 2), Region(0, 11, 40, 1), Region(0, 37, 120, 2), Region(0, 39, 120, 1)}
    assert bands(regions) == [Region(0, 10, 62, 2), Region(0, 37, 120, 3)]


def _written(update: ChopsUpdate, width: int) -> str:
    """What an update writes to the terminal (cursor moves, text, styles: only its spans' cells)."""
    console = Console(width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      legacy_windows=False)
    console.print(update, end="")
    return console.file.getvalue()


async def test_a_tab_in_the_config_form_repaints_the_same_cells(tmp_path: Path, monkeypatch) -> None:
    """Each partial frame of a Tab (fields near the top, help line and footer at the bottom) is compared with the
    one Textual's Compositor renders from the same changed regions."""
    compared: list[int] = []
    band_update = BandCompositor.render_partial_update

    def both(self: BandCompositor) -> ChopsUpdate | None:
        regions = set(self._dirty_regions)
        stock = Compositor.render_partial_update(self)
        self._dirty_regions.update(regions)
        ours = band_update(self)
        assert (stock is None) == (ours is None)
        if ours is not None:
            assert ours.spans == stock.spans and _written(ours, 120) == _written(stock, 120)
            compared.append(len(bands(regions)))
        return ours

    monkeypatch.setattr(BandCompositor, "render_partial_update", both)
    app = make_app(make_workspace(tmp_path / "ws"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("2")
        await settle(app, pilot)
        app.screen.query("ConfigField Input").first().focus()
        await settle(app, pilot)
        for _ in range(6):
            await pilot.press("tab")
            await pilot.pause()
    assert compared and max(compared) > 1  # some frames had changes far apart
