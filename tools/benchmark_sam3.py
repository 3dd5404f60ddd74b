#!/usr/bin/env python
"""SAM 3 text prompting per image, d2ext next to transformers' own pipeline. The code is
d2ext/cli/benchmark_sam3.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.benchmark_sam3 import main

if __name__ == "__main__":
    sys.exit(main())
