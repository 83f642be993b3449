"""The `tunedeck` command: the full-screen app with no command, a headless command otherwise.

One table names each command's module, imported only when that command runs: `tunedeck --help` loads the
root parser alone, and no headless command loads Textual. User mistakes print a message to stderr and
exit 1 (usage errors exit 2); never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from tunedeck.core import backend
from tunedeck.tui.cli import app
from tunedeck.tui.cli.output import UserError, fail, visible_output

# command -> its module in this package; each module's PARSERS maps its commands to their parsers
COMMANDS: dict[str, str] = {
    "data": "data",
    "config": "config",
    "train": "train",
    "runs": "train",
    "stop": "train",
    "chat": "chat",
    "eval": "eval_export",
    "export": "eval_export",
    "demo-model": "demo_model",
}


def run_command(name: str, argv: list[str]) -> int:
    """Parse `argv` with the command's own parser and run it."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[name]}")
    args = module.PARSERS[name]().parse_args(argv)
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """`tunedeck ARGS`: a command when the first argument names one, else the app (`tunedeck [WORKSPACE] ...`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    reexec = backend.reexec_argv_env(argv, module=__name__)
    if reexec is not None and argv[:1] not in (["--help"], ["-h"], ["--version"]):
        os.execve(reexec[0][0], reexec[0], reexec[1])
    try:
        if argv[:1] and argv[0] in COMMANDS:
            with visible_output():
                return run_command(argv[0], argv[1:])
        app.cmd_app(app.parser().parse_args(argv))
    except UserError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # a disk or permission failure the command did not expect: one line, no traceback
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"{where}{e.strerror or e}")
