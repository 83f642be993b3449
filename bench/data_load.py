"""How long `core.data.load` takes on a large file (target: 100,000 lines in under 2 s).

    python bench/data_load.py [--lines 100000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tunedeck.core.data import load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=100_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i in range(args.lines):
                conv = [{"role": "user", "content": f"find note {i}"},
                        {"role": "assistant", "content": json.dumps({"name": "search_notes", "arguments": {"query": str(i)}})}]
                f.write(json.dumps({"conversations": conv, "label": i % 4 != 0}) + "\n")
        t0 = time.perf_counter()
        ds = load(path)
        dt = time.perf_counter() - t0
    print(json.dumps({"lines": args.lines, "seconds": round(dt, 3), "examples": len(ds.examples),
                      "lines_per_sec": round(args.lines / dt)}))


if __name__ == "__main__":
    main()
