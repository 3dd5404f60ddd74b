#!/usr/bin/env python
"""tools/predict.py's images/s (batch 1 and 8, 1 and 2 processes) next to a loop over
DefaultPredictor, for EoMT and SAM 3 text prompts. The code is d2ext/cli/benchmark_predict.py;
--help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.benchmark_predict import main

if __name__ == "__main__":
    sys.exit(main())
