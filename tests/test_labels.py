"""core.labels: label fixes touch only the label token; backup, conflict detection, atomicity."""

from __future__ import annotations

import pytest

from tunedeck.core.data import load
from tunedeck.core.fsutil import sha256_file
from tunedeck.core.labels import LabelConflict, write_labels

BOM = b"\xef\xbb\xbf"
LINES = [
    b'{"label":true,  "conversations": [{"role": "user", "content": "say \\"label\\": true"},'
    b' {"role": "assistant", "content": "ok"}]}',
    b'{"conversations": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],'
    b' "meta": {"label": true}, "label" : false }',
    b'{"conversations": [{"role": "user", "content": "caf\xc3\xa9"}, {"role": "assistant", "content": "d"}],'
    b' "label": 1}',
    b'{"conversations": [{"role": "user", "content": "e"}, {"role": "assistant", "content": "f"}]}',
]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(BOM + b"\r\n".join(LINES) + b"\r\n")
    return path


def test_toggle_two_lines_of_a_crlf_bom_file(dataset):
    old = dataset.read_bytes()
    backup = write_labels(dataset, {1: False, 2: True}, sha256_file(dataset))
    expected = old.replace(b'{"label":true,', b'{"label":false,', 1).replace(b'"label" : false }', b'"label" : true }')
    assert dataset.read_bytes() == expected
    assert backup.read_bytes() == old and backup.name.startswith("d.jsonl.bak-")
    assert sorted(p.name for p in dataset.parent.iterdir()) == sorted(["d.jsonl", backup.name])  # no temp files
    assert [e.label for e in load(dataset).examples] == [False, True, True, True]


def test_coerced_and_missing_labels_become_json_booleans(dataset):
    old = dataset.read_bytes()
    write_labels(dataset, {3: False, 4: False}, sha256_file(dataset))
    new = dataset.read_bytes().split(b"\r\n")
    assert new[2].endswith(b'"label": false}') and new[3] == LINES[3][:-1] + b', "label": false}'
    assert new[:2] == old.split(b"\r\n")[:2] and new[4:] == [b""]
    ds = load(dataset)
    assert [e.label for e in ds.examples] == [True, False, False, False] and ds.warnings == [
        p for p in ds.problems if p.code == "bom"]


def test_unchanged_label_keeps_the_file_identical(dataset):
    old = dataset.read_bytes()
    write_labels(dataset, {1: True, 2: False}, sha256_file(dataset))
    assert dataset.read_bytes() == old


def test_conflict_after_an_external_edit(dataset):
    sha = sha256_file(dataset)
    dataset.write_bytes(dataset.read_bytes() + b'{"text": "added elsewhere"}\n')
    edited = dataset.read_bytes()
    with pytest.raises(LabelConflict):
        write_labels(dataset, {1: False}, sha)
    assert dataset.read_bytes() == edited and [p.name for p in dataset.parent.iterdir()] == ["d.jsonl"]


def test_bad_requests(dataset, tmp_path):
    sha = sha256_file(dataset)
    for line in (0, 5, 99):
        with pytest.raises(ValueError, match="no record"):
            write_labels(dataset, {line: True}, sha)
    listing = tmp_path / "d.json"
    listing.write_text("[]")
    with pytest.raises(ValueError, match="JSONL"):
        write_labels(listing, {1: True}, sha256_file(listing))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.jsonl"]


def test_backups_do_not_overwrite_each_other(dataset):
    first = write_labels(dataset, {1: False}, sha256_file(dataset))
    second = write_labels(dataset, {1: True}, sha256_file(dataset))
    assert first != second and first.exists() and second.exists()
    assert first.read_bytes() != second.read_bytes()
