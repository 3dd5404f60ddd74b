#!/usr/bin/env python
"""Predict instances for many images into one COCO json (OUT/predictions.json), split across
processes and resumable. The code is d2ext/cli/predict.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
