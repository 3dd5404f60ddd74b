#!/usr/bin/env python
"""Inference speed and memory of a d2ext config, optionally next to its peers in the same run. The
code is d2ext/cli/benchmark.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
