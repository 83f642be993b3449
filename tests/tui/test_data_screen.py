"""The Data screen on real files: browsing, filters, search, tokens, stats, problems, label edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import DataTable

from tests.tui.conftest import make_app, make_workspace, screen_text, settle, wait_for
from tunedeck.core.template import encode_example
from tunedeck.tui.widgets.split_bar import SplitBar
from tunedeck.tui.widgets.token_view import COMPLETION_STYLES, TokenView


def record(user: str, answer: str, label: object = True) -> str:
    return json.dumps({"conversations": [{"role": "user", "content": user},
                                         {"role": "assistant", "content": answer}], "label": label})


MIXED = [
    record("first question", "first answer"),
    record("second question", "second answer", False),
    record("third question", "third answer", 1),  # coerced label: a warning, kept
    '{"conversations": [',  # invalid JSON: set aside
    record("first question", "first answer"),  # duplicate of line 1: set aside
    record("sixth question about ponds", "sixth answer", False),
]


def rows(app) -> list[int]:
    table = app.screen.query_one(DataTable)
    return [int(key.value) for key in table.rows]


async def test_split_counts_and_browsing(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", n=40))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        ds = app.state.dataset
        d, u = ds.desirable, ds.undesirable
        text = screen_text(app)
        assert f"desirable {d} ({100 * d / 40:.1f}%)" in text
        assert f"undesirable {u} ({100 * u / 40:.1f}%)" in text
        assert app.screen.query_one(SplitBar).counts == (d, u)
        assert app.state.current_example is ds.examples[0]
        await pilot.press("j", "j", "k", "down")
        await pilot.pause()
        assert app.state.current_example is ds.examples[2]
        assert "#3 · line 3" in screen_text(app)


async def test_filters_cycle(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", lines=MIXED))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        examples = app.state.dataset.examples
        assert [e.line for e in examples] == [1, 2, 3, 6]
        expected = {"desirable": [0, 2], "undesirable": [1, 3], "flagged": [2]}
        for name, want in expected.items():
            await pilot.press("f")
            await pilot.pause()
            assert app.screen.filter == name and rows(app) == want, name
        assert "filter flagged" in screen_text(app)
        await pilot.press("f")  # over-length: needs token counts
        await settle(app, pilot)
        await wait_for(pilot, lambda: app.screen.token_counts is not None, 60, "token counts")
        assert rows(app) == []  # nothing is over max_seq_len = 512
        await pilot.press("f")
        await pilot.pause()
        assert app.screen.filter == "all" and rows(app) == [0, 1, 2, 3]


async def test_over_length_filter(tmp_path: Path, demo_model: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", n=30, max_seq_len=128))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        for _ in range(4):
            await pilot.press("f")
        await wait_for(pilot, lambda: app.screen.token_counts is not None, 60, "token counts")
        await settle(app, pilot)
        counts = app.screen.token_counts
        assert rows(app) == [i for i, n in enumerate(counts) if n > 128] != []


async def test_incremental_search(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", lines=MIXED))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("slash", *"PONDS")
        await pilot.pause(0.4)
        assert rows(app) == [3]
        await pilot.press("backspace", "backspace", "backspace", "backspace", "backspace", *"answer")
        await pilot.pause(0.4)
        assert rows(app) == [0, 1, 2, 3]
        await pilot.press(*" xyz")
        await pilot.pause(0.4)
        assert rows(app) == [] and "No examples match" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause(0.4)
        assert rows(app) == [0, 1, 2, 3]
        assert not app.screen.query_one("#search").display


async def test_token_view_highlights_the_completion(tmp_path: Path, demo_model: Path) -> None:
    from mlx_lm.utils import load_tokenizer

    app = make_app(make_workspace(tmp_path / "ws", n=10))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("j", "t")
        await wait_for(pilot, lambda: app.model_status.state == "ready", 60, "the tokenizer")
        await settle(app, pilot)
        view = app.screen.query_one(TokenView)
        enc = encode_example(load_tokenizer(demo_model), app.state.dataset.examples[1])
        assert view.encoded.ids == enc.ids
        assert view.highlighted == enc.completion_len
        body = view.query_one("#token-body").render()
        assert sum(1 for span in body.spans if span.style in COMPLETION_STYLES) == enc.completion_len
        summary = view.query_one("#token-summary").render().plain
        assert f"prompt {enc.prompt_len}" in summary and f"completion (trained) {enc.completion_len}" in summary
        assert f"total {len(enc.ids)} tokens" in summary
        assert "fits data.max_seq_len = 512" in summary
        tokens_cell = app.screen.query_one(DataTable).get_cell("1", "tokens")
        assert str(tokens_cell) == str(len(enc.ids))
        await pilot.press("t")
        await pilot.pause()
        assert "#2 · line 2" in screen_text(app)


async def test_token_view_shows_truncation(tmp_path: Path, demo_model: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", n=3, max_seq_len=40))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("j", "t")  # line 2 is longer than 40 tokens
        await wait_for(pilot, lambda: app.model_status.state == "ready", 60, "the tokenizer")
        await settle(app, pilot)
        summary = app.screen.query_one("#token-summary").render().plain
        assert "over data.max_seq_len = 40: the first" in summary and "prompt tokens would be cut" in summary


async def test_stats_panel(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", n=40))
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("s")
        await settle(app, pilot)
        text = screen_text(app)
        ds = app.state.dataset
        assert f"examples {len(ds.examples)}" in text and "KTO weights for this balance" in text
        assert "duplicates 0" in text and "turns min" in text


async def test_problems_panel_jumps_to_the_example(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", lines=MIXED))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("p")
        await pilot.pause()
        text = screen_text(app)
        assert "line     3" in text and "line     4" in text and "invalid JSON" in text
        await pilot.press("enter")  # line 3: the coerced label, an example
        await pilot.pause()
        assert app.screen.pane == "example" and app.state.current_example.line == 3
        await pilot.press("p", "down", "enter")  # line 4: set aside, nothing to show
        await pilot.pause()
        assert app.state.current_example.line == 3


async def test_label_toggle_undo_and_save(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=20)
    path = ws / "data.jsonl"
    before = path.read_bytes().split(b"\n")
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        first_label = app.state.dataset.examples[0].label
        d0 = app.state.dataset.desirable
        await pilot.press("space", "j", "space", "j", "space")
        await pilot.pause()
        assert len(app.screen.edits) == 3 and app.state.dirty == {"data"}
        await pilot.press("u")
        await pilot.pause()
        assert sorted(app.screen.edits) == [1, 2]
        text = screen_text(app)
        assert "2 unsaved label edits" in text and "●" in text
        await pilot.press("k")
        await pilot.pause()
        assert "modified (unsaved)" in app.screen.query_one("#example").content.plain
        assert sum(app.screen.query_one(SplitBar).counts) == 20
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert app.screen.edits == {} and app.state.dirty == set()
        assert app.state.dataset.examples[0].label is (not first_label)
        assert app.state.dataset.desirable != d0 or first_label != app.state.dataset.examples[1].label
    after = path.read_bytes().split(b"\n")
    assert json.loads(after[0])["label"] is (not first_label)
    assert json.loads(after[1])["label"] is (not json.loads(before[1])["label"])
    assert after[2:] == before[2:]
    backups = list(ws.glob("data.jsonl.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes().split(b"\n") == before


async def test_save_conflict_keeps_edits(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=10)
    path = ws / "data.jsonl"
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        first_label = app.state.dataset.examples[0].label
        await pilot.press("space")
        await pilot.pause()
        lines = path.read_text(encoding="utf-8").splitlines()
        lines[4] = record("edited elsewhere", "meanwhile")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        external = path.read_bytes()
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert path.read_bytes() == external
        assert app.screen.edits == {1: not first_label} and app.state.dirty == {"data"}
        messages = [n.message for n in app._notifications]
        assert any("changed on disk" in m and "press r" in m for m in messages)
        await pilot.press("r")
        await settle(app, pilot)
        assert app.screen.edits == {1: not first_label}  # line 1 is unchanged: its edit is kept
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert app.screen.edits == {}
    saved = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(saved[0])["label"] is (not first_label)
    assert "edited elsewhere" in saved[4]


async def test_missing_dataset_is_reported(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", n=5)
    (ws / "data.jsonl").unlink()
    app = make_app(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert "file not found" in screen_text(app)
        await pilot.press("space", "j", "t", "s", "f")
        await pilot.pause()
        assert app.is_running


@pytest.mark.parametrize("theme", ["tunedeck-light", "tunedeck-contrast"])
async def test_themes_render_the_data_screen(tmp_path: Path, theme: str) -> None:
    app = make_app(make_workspace(tmp_path / "ws", n=5))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.theme = theme
        await pilot.pause()
        assert "desirable" in screen_text(app)


PONDS = [record(f"question {n}" + (" about ponds" if n % 2 else ""), f"answer {n}") for n in range(1, 9)]


def shown_matches(app) -> list[str]:
    """The highlighted stretches of the example pane's text."""
    from tunedeck.tui.widgets.example_view import MATCH_STYLE

    content = app.screen.query_one("#example").content
    return [content.plain[s.start:s.end] for s in content.spans if s.style == MATCH_STYLE]


async def test_search_highlights_matches_and_n_moves_between_them(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", lines=PONDS))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("slash", *"PONDS")
        await wait_for(pilot, lambda: rows(app) == [0, 2, 4, 6], what="the matching examples")
        await pilot.press("enter")  # the search stays on, the list gets the keys
        await pilot.pause()
        assert app.state.current_example.line == 1 and shown_matches(app) == ["ponds"]
        await pilot.press("n")
        await pilot.pause()
        assert app.state.current_example.line == 3 and shown_matches(app) == ["ponds"]
        await pilot.press("N", "N")  # back to the first, then round to the last
        await pilot.pause()
        assert app.state.current_example.line == 7
        await pilot.press("escape")  # clears the search although its field is closed
        await wait_for(pilot, lambda: rows(app) == list(range(8)), what="every example again")
        assert app.state.current_example.line == 7  # the cursor stays on the example when the list widens
        assert shown_matches(app) == [] and "search (/)" in screen_text(app)


async def test_filters_from_the_palette(tmp_path: Path) -> None:
    app = make_app(make_workspace(tmp_path / "ws", lines=MIXED))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("j", "j")  # the third example: desirable
        await pilot.pause()
        await pilot.press("ctrl+p", *"Filter undesirable")
        await wait_for(pilot, lambda: "Data: Filter undesirable" in screen_text(app), what="the palette's command")
        await pilot.press("enter")
        await wait_for(pilot, lambda: rows(app) == [1, 3], what="the undesirable examples")
        await pilot.press("ctrl+p", *"Filter all", "enter")
        await wait_for(pilot, lambda: rows(app) == [0, 1, 2, 3], what="every example")


async def test_a_long_example_scrolls_to_its_match_and_back_to_the_top(tmp_path: Path) -> None:
    """The example pane draws and scrolls the example itself: the search's first match deep in a long answer
    is on screen, the next example starts at its top, and the pane's scroll range is the example's lines."""
    long_answer = " ".join(f"word{n}" for n in range(400)) + " the hidden pond"
    app = make_app(make_workspace(tmp_path / "ws", lines=[record("a long one", long_answer), *PONDS]))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        view = app.screen.query_one("#example")
        assert view.virtual_size.height > view.scrollable_content_region.height  # it scrolls
        await pilot.press("slash", *"hidden", "enter")
        await wait_for(pilot, lambda: rows(app) == [0], what="the one match")
        await wait_for(pilot, lambda: view.scroll_y > 0, what="the pane scrolled to the match")
        assert "hidden" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(rows(app)) == 9, what="every example again")
        await pilot.press("j")
        await wait_for(pilot, lambda: app.state.current_example.line == 2, what="the next example")
        assert view.scroll_y == 0 and "#2 · line 2" in screen_text(app)


async def test_j_past_the_lists_edge_scrolls_half_a_page_at_once(tmp_path: Path) -> None:
    """The list scrolls the cursor's row to its middle when it leaves the view, so the next keys scroll nothing
    (each scroll redraws every row shown)."""
    app = make_app(make_workspace(tmp_path / "ws", n=60))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        shown = table.scrollable_content_region.height - table.header_height
        await pilot.press(*["j"] * shown)  # row `shown`: the first one below the view
        await pilot.pause()
        assert table.cursor_row == shown and table.scroll_y == shown - shown // 2
        await pilot.press("j", "j")
        await pilot.pause()
        assert table.scroll_y == shown - shown // 2  # still in view: no scroll
        await pilot.press(*["k"] * (shown - shown // 2 + 2))  # back above the view's top
        await pilot.pause()
        row = table.cursor_row
        assert table.scroll_y == max(0, row - shown // 2) and app.state.current_example.line == row + 1


async def test_the_mouse_selects_text_in_the_example(tmp_path: Path) -> None:
    """A drag over the example pane selects its text as in any Static (drawn in the selection style), across a
    wrapped line too; the selected text is the example's."""
    app = make_app(make_workspace(tmp_path / "ws", lines=[record("which pond " * 20, "the old pond")]))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        view = app.screen.query_one("#example")
        await pilot.mouse_down(view, offset=(1, 0))  # the pane's first cell is padding
        await pilot.hover(view, offset=(11, 0))
        await pilot.mouse_up(view, offset=(11, 0))
        assert app.screen.get_selected_text() == "#1 · line 1"  # cells 1-11, the cell under the pointer included
        selection = app.screen.get_component_rich_style("screen--selection").bgcolor
        drawn = [(s.text, s.style.bgcolor == selection) for s in view.render_line(0)._segments[:3]]
        assert drawn[:2] == [("#1", True), (" · line 1", True)] and not drawn[2][1], drawn
        question = view.content.plain.split("\n")[3]  # header, blank line, "── user ──", the question (wrapped)
        first = view.render_line(3).text.strip()
        assert len(first) < len(question.strip())
        await pilot.mouse_down(view, offset=(1, 3))
        await pilot.hover(view, offset=(6, 4))  # 6 cells into the question's second line
        await pilot.mouse_up(view, offset=(6, 4))
        assert app.screen.get_selected_text() == question[: len(first) + 1 + 6]  # + the space the wrap took


async def test_the_list_builds_the_cells_of_the_rows_it_draws(tmp_path: Path, monkeypatch) -> None:
    """A row's cells are built when the list first draws it (a 10,000-line file costs what is on screen); the
    columns are as wide as their widest cell all the same, and a row drawn later shows its own cells."""
    from rich.cells import cell_len

    from tunedeck.tui.screens.data import DataScreen

    built: list[int] = []
    row = DataScreen._row
    monkeypatch.setattr(DataScreen, "_row", lambda self, i: built.append(i) or row(self, i))
    app = make_app(make_workspace(tmp_path / "ws", n=300))
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(DataTable)
        assert len(rows(app)) == 300 and 0 < len(set(built)) < 60  # about a screen of rows, not 300
        assert table.columns["n"].content_width == 3  # "300", a row not yet drawn
        widest = max(cell_len(" ".join(ex.prompt[0]["content"].split())[:48]) for ex in app.state.dataset.examples)
        assert table.columns["prompt"].content_width == widest  # 48 characters, some of them two cells wide
        assert str(table.get_cell("299", "n")) == "300" and 299 in built


async def test_a_small_file_loads_as_the_screen_mounts_a_large_one_in_a_worker(tmp_path: Path, monkeypatch) -> None:
    """A dataset up to LOAD_AT_MOUNT_BYTES is listed in the screen's first frame (never "loading…"); a larger one
    is read in a worker thread while the screen says so, then listed the same way."""
    from tunedeck.tui.screens import data

    statuses: list[str | None] = []
    set_status = data.DataScreen._set_status
    monkeypatch.setattr(data.DataScreen, "_set_status", lambda self, m=None: statuses.append(m) or set_status(self, m))
    for limit, loading in ((data.LOAD_AT_MOUNT_BYTES, False), (0, True)):
        monkeypatch.setattr(data, "LOAD_AT_MOUNT_BYTES", limit)
        statuses.clear()
        app = make_app(make_workspace(tmp_path / f"ws{limit}", n=40))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 40, what="the list")
            assert app.state.current_example is app.state.dataset.examples[0]
        assert any(m and m.startswith("loading") for m in statuses) is loading
