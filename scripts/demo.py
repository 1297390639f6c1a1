"""`python -m scripts.demo` (`make demo`): the same as `clipsearch demo` (clipsearch/demo.py)."""

from __future__ import annotations

import sys

from clipsearch.demo import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m scripts.demo"))
