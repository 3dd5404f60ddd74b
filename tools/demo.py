#!/usr/bin/env python
"""Run a d2ext model on images or a video and draw its predictions with detectron2's Visualizer.
The code is d2ext/cli/demo.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
