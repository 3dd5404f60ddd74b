#!/usr/bin/env python
"""Convert an EoMT model (transformers' or the EoMT repository's own checkpoints, DINOv3 deltas
included) into a d2ext checkpoint plus its config. The code is d2ext/cli/convert_eomt.py;
--help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.convert_eomt import main

if __name__ == "__main__":
    sys.exit(main())
