"""`python -m tunedeck.tui.cli`: how the command re-executes itself with OpenBLAS preloaded (core.backend)."""

import sys

from tunedeck.tui.cli import main

sys.exit(main())
