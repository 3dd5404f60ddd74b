#!/usr/bin/env python
"""Per-image cost of the SAM-prompt pipeline against its floor, DINO backbone + SAM encoder. The
code is d2ext/cli/benchmark_sam.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.benchmark_sam import main

if __name__ == "__main__":
    sys.exit(main())
