"""A compositor that repaints the changed areas of a frame, not the box around all of them.

Textual's partial update crops the frame to the smallest rectangle holding every changed region, then renders
every widget whose clip (its container's visible area) meets that rectangle: a Tab in the Config form (the
fields losing and gaining focus near the top, the help line and the footer at the bottom) rendered ~50 widgets
(every field of the form, whose clip is the whole form; the header; the footer) to change 5 rows. This one
groups the changed regions into bands of lines that touch, renders each band on its own, and only the widgets
whose visible part meets it; the frame it hands over is the same (the same lines and spans, the same cells)."""

from __future__ import annotations

from collections.abc import Iterable

from textual._compositor import ChopsUpdate, Compositor
from textual.geometry import Region
from textual.strip import Strip


def bands(regions: set[Region]) -> list[Region]:
    """The regions merged into rectangles whose line ranges do not overlap or touch, top to bottom."""
    merged: list[Region] = []
    for region in sorted(regions, key=lambda r: r.y):
        if merged and region.y <= merged[-1].bottom:
            merged[-1] = merged[-1].union(region)
        else:
            merged.append(region)
    return merged


def make_compositor() -> Compositor:
    """A BandCompositor where this Textual has the private pieces it builds on (checked against 8.2), else
    Textual's own."""
    stock = all(hasattr(Compositor, name) for name in ("_get_renders", "_render_chops", "_regions_to_spans"))
    return BandCompositor() if stock else Compositor()


class BandCompositor(Compositor):
    """`render_partial_update` band by band (a full update is Textual's own)."""

    def _get_renders(self, crop: Region | None = None) -> Iterable[tuple[Region, Region, list[Strip]]]:
        """The visible lines of each widget whose visible part (not merely its clip) meets `crop`."""
        if not crop:
            yield from super()._get_renders(crop)
            return
        for widget, (region, clip) in self.visible_widgets.items():
            shown = region.intersection(clip)
            if shown and crop.overlaps(shown):
                yield region, clip, widget.render_lines(shown.translate((-region.x, -region.y)))

    def render_partial_update(self) -> ChopsUpdate | None:
        screen_region = self.size.region
        update_regions = self._dirty_regions.copy()
        self._dirty_regions.clear()
        if not update_regions:
            return None
        spans = list(self._regions_to_spans(update_regions))
        is_rendered_line = {y for y, _, _ in spans}.__contains__
        chops = [dict.fromkeys(cut_set[:-1]) for cut_set in self.cuts]
        for band in bands(update_regions):
            crop = band.intersection(screen_region)
            if crop:
                rendered = self._render_chops(crop, is_rendered_line)
                for y in crop.line_range:  # bands share no line: each line's chops come from its own band
                    chops[y] = rendered[y]
        return ChopsUpdate(chops, spans, [cut_set[1:] for cut_set in self.cuts])
