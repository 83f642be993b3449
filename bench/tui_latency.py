"""How fast the app answers keys: drives it headless with Textual's Pilot and times key -> screen updated.

    python bench/tui_latency.py [--tabs 18] [--moves 40] [--events 20] [--examples 200] [--size 120x40] [--think 5]

Interactions: `Tab` through the Config form (`config_tab`), `j`/`k` in the Data screen's list (`data_jk`),
a step event appended to a followed run's events.jsonl -> the Train screen's `step N/TOTAL` (`train_event`,
each written at a random phase of the follower's poll); and each screen's first mount (the key 1-5 -> the
screen shown and settled; the Data screen's from the app's start: a fresh interpreter's import of the app,
`app_import_ms`, plus this process's app start to the first example list shown and settled). Each screen key
comes after `--think` seconds without input, a user reading the screen; the app builds the Config screen in such
a pause (`--think 0`: the keys at once, Config built on its key). The garbage collector is set up as `run_app`
sets it (tunedeck.tui.heap: full collections only while the user pauses).
"Screen updated" is the last frame the app hands its driver before it is idle again (Pilot's own polling for
idle, which ends after that frame, is not counted). The workspace is a temporary copy of the bundled sample
data (its first `--examples`, 200 by default; past its 1,000 it repeats, each copy's first turn ending in
" (copy k)") with the demo config; nothing is trained. The last line printed is one JSON object in milliseconds:
a `<interaction>_p95_ms` (and `_median_ms`) key per interaction and a `<screen>_first_mount_ms` key per screen. Targets: p95 <= 100 ms per key, <= 1000 ms per first mount.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual.widgets import Input  # noqa: E402

from tunedeck.core import config as C  # noqa: E402
from tunedeck.core.demo import sample_dataset  # noqa: E402
from tunedeck.tui import heap  # noqa: E402
from tunedeck.tui.app import TunedeckApp, initial_state  # noqa: E402
from tunedeck.tui.state import CONFIG_NAME  # noqa: E402

SCREENS = {"config": "2", "train": "3", "chat": "4", "runs": "5"}


def examples(n: int) -> list[str]:
    """The bundled sample's first `n` lines; past its end it repeats, each copy's first turn ending in
    " (copy k)" so that the loader does not set the copies aside as duplicates."""
    lines = sample_dataset().read_text(encoding="utf-8").splitlines()
    out = lines[:n]
    for i in range(len(lines), n):
        record = json.loads(lines[i % len(lines)])
        record["conversations"][0]["content"] += f" (copy {i // len(lines)})"
        out.append(json.dumps(record))
    return out


def workspace(root: Path, n: int) -> Path:
    (root / "data.jsonl").write_text("\n".join(examples(n)) + "\n", encoding="utf-8")
    C.save(C.preset("demo", "data.jsonl"), root / CONFIG_NAME)
    return root


def import_ms(runs: int = 3) -> float:
    """A fresh interpreter's time to import the app, the median of `runs`: `tunedeck` waits for it before the
    app starts (this process imported it already, so the in-process clock cannot see it)."""
    code = "import time; t = time.perf_counter(); import tunedeck.tui.app; print((time.perf_counter() - t) * 1000)"
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True, cwd=ROOT).stdout) for _ in range(runs))


def p95(ms: list[float]) -> float:
    ordered = sorted(ms)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def settle(app: TunedeckApp, pilot) -> None:
    """Until the message queues are empty and a refresh has gone through."""
    await pilot.pause()
    await app.animator.wait_until_complete()


class Frames:
    """When the app last handed a frame (the compositor's screen update) to its driver."""

    def __init__(self, app: TunedeckApp) -> None:
        self.last = 0.0
        display = app._display

        def timed(screen, renderable) -> None:
            display(screen, renderable)
            if renderable is not None:
                self.last = time.perf_counter()

        app._display = timed  # type: ignore[method-assign]


async def timed_press(app: TunedeckApp, pilot, frames: Frames, key: str) -> float:
    """Ms from the key sent to the last frame drawn before the app is idle again (Pilot's own waits for idle,
    tens of ms a key on a loaded machine, are not the app's latency: they end after that frame)."""
    frames.last = 0.0
    t0 = time.perf_counter()
    await pilot.press(key)
    await settle(app, pilot)
    return ((frames.last or time.perf_counter()) - t0) * 1000


async def train_events(app: TunedeckApp, pilot, ws: Path, n: int) -> list[float]:
    """Attach the Train screen to a run of one start event, then append `n` step events one at a time: the ms
    from each write to its step shown."""
    run_dir = ws / "runs" / "20260101-000000-sft"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text((ws / CONFIG_NAME).read_text(encoding="utf-8"), encoding="utf-8")
    events = run_dir / "events.jsonl"
    events.write_text(json.dumps({"type": "start", "step": 0, "time": 1.0, "method": "sft", "total_steps": n}) + "\n")
    await app.switch_mode("train")
    app.screen.attach(run_dir)
    label = app.screen.query_one("#step")
    rng = random.Random(0)
    out = []
    for step in range(n + 1):
        if step:
            await asyncio.sleep(rng.uniform(0, 0.25))  # a random phase of the follower's poll
            with open(events, "a", encoding="utf-8") as f:
                f.write(json.dumps({"type": "step", "step": step, "time": 1.0 + step, "loss": 1.0}) + "\n")
        t0 = time.perf_counter()
        while str(label.render()) != f"step {step}/{n}":
            await pilot.pause(0.002)
        if step:
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def measure(ws: Path, tabs: int, moves: int, n_events: int, size: tuple[int, int],
                  think: float) -> dict[str, float]:
    out: dict[str, float] = {"app_import_ms": import_ms()}
    t0 = time.perf_counter() - out["app_import_ms"] / 1000  # as if this process had just imported the app
    heap.defer_full_collections()  # as run_app does
    app = TunedeckApp(initial_state(ws, None, None, None))
    frames = Frames(app)
    async with app.run_test(size=size) as pilot:
        table = app.screen.query_one("#examples")
        while table.row_count == 0:  # the dataset loads in a worker
            await pilot.pause(0.005)
        await settle(app, pilot)
        out["data_first_mount_ms"] = (time.perf_counter() - t0) * 1000
        jk = [await timed_press(app, pilot, frames, "j") for _ in range(moves)]
        jk += [await timed_press(app, pilot, frames, "k") for _ in range(moves)]
        for name, key in SCREENS.items():
            app.screen.set_focus(None)  # 1-5 type into a focused text field (the Chat prompt)
            await asyncio.sleep(think)  # the user reads the screen (the app builds Config in such a pause)
            await settle(app, pilot)
            out[f"{name}_first_mount_ms"] = await timed_press(app, pilot, frames, key)
            assert app.current_mode == name, f"{key} did not open {name}"
            await app.workers.wait_for_complete()
        await app.switch_mode("config")
        await app.workers.wait_for_complete()
        await settle(app, pilot)
        for field in app.screen.query(Input):
            field.cursor_blink = False  # a blink is a frame no key asked for
        app.screen.query("ConfigField Input").first().focus()
        await settle(app, pilot)
        tab = [await timed_press(app, pilot, frames, "tab") for _ in range(tabs)]
        event = await train_events(app, pilot, ws, n_events)
    for name, ms in (("config_tab", tab), ("data_jk", jk), ("train_event", event)):
        out[f"{name}_p95_ms"] = p95(ms)
        out[f"{name}_median_ms"] = statistics.median(ms)
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tabs", type=int, default=18, help="Tab presses in the Config form")
    ap.add_argument("--moves", type=int, default=40, help="j presses, then as many k presses, in the Data list")
    ap.add_argument("--events", type=int, default=20, help="step events appended to the followed run")
    ap.add_argument("--examples", type=int, default=200, help="examples in the dataset")
    ap.add_argument("--size", default="120x40", help="terminal size, COLSxROWS")
    ap.add_argument("--think", type=float, default=5.0,
                    help="seconds without input before each screen key (0: the keys at once, a cold Config screen)")
    args = ap.parse_args()
    cols, rows = (int(x) for x in args.size.split("x"))
    load = os.getloadavg()[0]  # the machine is shared: a timing means little without the load it ran under
    with tempfile.TemporaryDirectory(prefix="tunedeck-bench-") as tmp:
        result = asyncio.run(measure(workspace(Path(tmp), args.examples), args.tabs, args.moves, args.events,
                                     (cols, rows), args.think))
    for key, value in result.items():
        print(f"{key:28} {value:9.1f} ms")
    print(f"1-minute load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
