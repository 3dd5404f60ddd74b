#!/usr/bin/env python
"""Images/s of d2ext's semantic segmentation configs next to the bare DINOv3 backbone, on CPU. The
code is d2ext/cli/benchmark_semseg.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.benchmark_semseg import main

if __name__ == "__main__":
    sys.exit(main())
