"""The training process: `python -m tunedeck.core.worker RUN_DIR [--resume]`.

Started by `core.runs.spawn_detached` and `core.launch` (one per rank, argv from `core.rundir.trainer_command`); it runs the trainer on a prepared
run directory and exits with its status. Not a user command: the CLI and the app start it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .rundir import WORKER_MODULE as MODULE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    from .trainer import Trainer

    return Trainer(Path(args.run_dir), resume=args.resume).run()


if __name__ == "__main__":
    sys.exit(main())
