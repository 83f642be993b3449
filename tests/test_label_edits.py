"""core.label_edits: label edits on a real JSONL file: set, toggle and undo, carried over a reload, saved."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tunedeck.core import label_edits
from tunedeck.core.data import load
from tunedeck.core.label_edits import LabelEdits
from tunedeck.core.labels import LabelConflict, write_labels


def record(user: str, answer: str, label: bool) -> str:
    return json.dumps({"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                       "label": label})


LINES = [record("a", "1", True), record("b", "2", True), record("c", "3", False), record("d", "4", True)]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def edits(tmp_path: Path) -> LabelEdits:
    edits = LabelEdits()
    assert edits.reload(load(write(tmp_path / "d.jsonl", LINES))) == 0
    return edits


def example(edits: LabelEdits, line: int):
    return next(ex for ex in edits.dataset.examples if ex.line == line)


def labels_on_disk(path: Path) -> list[bool]:
    return [json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_toggle_undo_and_what_changed(edits: LabelEdits) -> None:
    edits.toggle(example(edits, 1))
    edits.toggle(example(edits, 3))
    assert edits == {1: False, 3: True} and edits.counts() == (3, 1)
    assert edits.label(example(edits, 1)) is False and example(edits, 1).label is True  # the file's stays
    assert edits.undo() is example(edits, 3)
    assert edits == {1: False} and edits.counts() == (2, 2)
    edits.toggle(example(edits, 1))  # back to the file's label: no edit left
    assert edits == {} and len(edits) == 0
    assert edits.undo() is example(edits, 1)  # undoing that toggle makes the edit again
    assert edits == {1: False}
    assert edits.undo() is example(edits, 1) and edits == {}
    assert edits.undo() is None


def test_set_a_label(edits: LabelEdits) -> None:
    edits.set(example(edits, 2), False)
    edits.set(example(edits, 4), True)  # already the file's label: not an edit
    assert edits == {2: False} and edits.undo() is None  # set is not a toggle: nothing to undo
    edits.set(example(edits, 2), True)
    assert edits == {}


def test_save_writes_the_file_and_applies_the_edits(edits: LabelEdits, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    edits.toggle(example(edits, 2))
    edits.toggle(example(edits, 3))
    backup = edits.save()
    assert labels_on_disk(path) == [True, False, True, True]
    assert backup.read_text(encoding="utf-8").splitlines() == LINES  # the old file, beside it
    assert edits == {} and edits.undo() is None
    assert [ex.label for ex in edits.dataset.examples] == [True, False, True, True]
    assert edits.reload(load(path)) == 0 and edits == {}


def test_reload_keeps_edits_to_unchanged_lines(edits: LabelEdits, tmp_path: Path) -> None:
    for line in (1, 2, 3):
        edits.toggle(example(edits, line))
    assert edits == {1: False, 2: False, 3: True}
    changed = [LINES[0], record("b", "another answer", True), record("c", "3", True), LINES[3]]
    ds = load(write(tmp_path / "d.jsonl", changed))
    # line 1: unchanged, kept; line 2: its completion changed, dropped; line 3: the file now says what the
    # edit said, so it is no longer an edit (neither kept nor dropped)
    assert edits.reload(ds) == 1
    assert edits.dataset is ds and edits == {1: False}
    assert edits.undo() is example(edits, 1) and edits.undo() is None  # only line 1's toggle is left to undo


def test_a_line_that_is_gone_drops_its_edit(edits: LabelEdits, tmp_path: Path) -> None:
    edits.toggle(example(edits, 4))
    assert edits.reload(load(write(tmp_path / "d.jsonl", LINES[:3]))) == 1 and edits == {}


def test_a_file_changed_on_disk_is_not_saved_and_the_edits_stay(edits: LabelEdits, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    edits.toggle(example(edits, 1))
    write(path, [*LINES, record("e", "5", False)])  # another program appended a line
    before = path.read_bytes()
    with pytest.raises(LabelConflict):
        edits.save()
    assert path.read_bytes() == before and edits == {1: False}
    assert edits.reload(load(path)) == 0 and edits == {1: False}  # the reload keeps it: line 1 is unchanged
    edits.save()
    assert labels_on_disk(path) == [False, True, False, True, False]


def test_edits_made_while_saving_stay_unsaved(edits: LabelEdits, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The save runs in a thread (as the Data screen runs it); the user edits on meanwhile."""
    path = tmp_path / "d.jsonl"
    writing, go_on = threading.Event(), threading.Event()

    def slow_write(*args):
        writing.set()
        assert go_on.wait(120)
        return write_labels(*args)

    monkeypatch.setattr(label_edits, "write_labels", slow_write)
    edits.toggle(example(edits, 1))
    edits.toggle(example(edits, 2))
    saver = threading.Thread(target=edits.save)
    saver.start()
    assert writing.wait(120)
    edits.toggle(example(edits, 1))  # back to true while line 1's false is being written
    edits.toggle(example(edits, 4))  # a new edit
    go_on.set()
    saver.join(120)
    assert labels_on_disk(path) == [False, False, False, True]  # what was saved
    assert edits == {1: True, 4: False}  # relative to the file as saved
    assert [edits.label(ex) for ex in edits.dataset.examples] == [True, False, False, False]


def test_a_json_list_takes_no_edits(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("[" + ",".join(LINES) + "]", encoding="utf-8")
    edits = LabelEdits()
    assert not edits.editable
    edits.reload(load(path))
    assert not edits.editable and edits.counts() == (3, 1)
