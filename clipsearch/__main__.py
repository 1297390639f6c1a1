"""`python -m clipsearch <command>`: the `clipsearch` command (clipsearch/cli.py)."""

from __future__ import annotations

import sys

from clipsearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
