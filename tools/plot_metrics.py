#!/usr/bin/env python
"""Plot a training run's curves from OUTPUT_DIR/metrics.json into OUTPUT_DIR/plots/*.png. The code
is d2ext/cli/plot_metrics.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.plot_metrics import main

if __name__ == "__main__":
    sys.exit(main())
