"""Unsaved label fixes to a loaded dataset: set, toggled and undone, carried over a reload of the file, saved.

`LabelEdits` maps a file line to the label the user gave it, for the lines whose label differs from the
file's; the save goes through `core.labels.write_labels` (atomic, with a backup, refused when the file
changed on disk or another program writes it). A save may run in a worker thread while the edits go on in
another: what changes during it stays an unsaved edit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from tunedeck.core.data import Dataset, Example
from tunedeck.core.labels import write_labels


class LabelEdits(Mapping[int, bool]):
    """The edits to `dataset` (the file as last loaded), line -> new label, with an undo stack of toggles."""

    def __init__(self) -> None:
        self.dataset: Dataset | None = None
        self._changes: dict[int, bool] = {}
        self._undo: list[int] = []  # lines toggled, the most recent last
        self._lock = threading.Lock()  # a save in a worker thread and the edits never interleave

    def __getitem__(self, line: int) -> bool:
        return self._changes[line]

    def __iter__(self) -> Iterator[int]:
        return iter(self._changes)

    def __len__(self) -> int:
        return len(self._changes)

    @property
    def editable(self) -> bool:
        """Whether the loaded file takes label edits (JSONL does, a .json list does not)."""
        return self.dataset is not None and self.dataset.path.suffix.lower() != ".json"

    def label(self, ex: Example) -> bool:
        """`ex`'s label with the edits applied."""
        return self._changes.get(ex.line, ex.label)

    def counts(self) -> tuple[int, int]:
        """(desirable, undesirable) examples of the dataset with the edits applied."""
        if self.dataset is None:
            return 0, 0
        desirable = sum(self.label(ex) for ex in self.dataset.examples)
        return desirable, len(self.dataset.examples) - desirable

    def set(self, ex: Example, label: bool) -> None:
        """Give `ex` `label` (back to the file's label: no edit)."""
        with self._lock:
            self._set(ex, label)

    def _set(self, ex: Example, label: bool) -> None:
        if label == ex.label:
            self._changes.pop(ex.line, None)
        else:
            self._changes[ex.line] = label

    def toggle(self, ex: Example) -> None:
        """Flip `ex`'s label; `undo` flips it back."""
        with self._lock:
            self._set(ex, not self.label(ex))
            self._undo.append(ex.line)

    def undo(self) -> Example | None:
        """Flip back the most recent toggle still undoable; the example it changed (None: nothing to undo)."""
        with self._lock:
            if not self._undo or self.dataset is None:
                return None
            line = self._undo.pop()
            ex = next(e for e in self.dataset.examples if e.line == line)
            self._set(ex, not self.label(ex))
            return ex

    def reload(self, ds: Dataset) -> int:
        """Make `ds` (the file loaded again) the edited dataset, keeping each edit whose line still holds the same
        prompt and completion and whose label there still differs; how many were dropped (their line changed)."""
        with self._lock:
            before = {ex.line: ex for ex in self.dataset.examples} if self.dataset is not None else {}
            now = {ex.line: ex for ex in ds.examples}
            kept: dict[int, bool] = {}
            dropped = 0
            for line, label in self._changes.items():
                old, new = before.get(line), now.get(line)
                if new is None or old is None or (new.prompt, new.completion) != (old.prompt, old.completion):
                    dropped += 1
                elif new.label != label:
                    kept[line] = label
            self.dataset, self._changes = ds, kept
            self._undo = [line for line in self._undo if line in kept]
            return dropped

    def save(self) -> Path:
        """Write the edits into the file (`core.labels.write_labels`) and apply them to the loaded examples; the
        backup's path. LabelConflict, OSError or ValueError: nothing was written and the edits are as they were.
        Edits made while it writes stay unsaved edits."""
        with self._lock:
            ds, written = self.dataset, dict(self._changes)
        if ds is None or not written:
            raise ValueError("no label edits to save")
        backup = write_labels(ds.path, written, ds.sha256)
        with self._lock:
            if ds is self.dataset:  # else reloaded meanwhile: the next reload absorbs what the file now holds
                by_line = {ex.line: ex for ex in ds.examples}
                for line, label in written.items():
                    ex = by_line[line]
                    wanted = self.label(ex)
                    ex.label = label
                    self._set(ex, wanted)
                self._undo = [line for line in self._undo if line in self._changes]
        return backup
