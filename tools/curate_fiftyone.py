#!/usr/bin/env python
"""Curate Open Images V7 in FiftyOne, export COCO splits for d2ext, bring predictions back. The
code is d2ext/cli/curate_fiftyone.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.curate_fiftyone import main

if __name__ == "__main__":
    sys.exit(main())
