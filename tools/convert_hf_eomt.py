#!/usr/bin/env python
"""Convert transformers' EoMT weights into a d2ext checkpoint plus its config. The code is
d2ext/cli/convert_hf_eomt.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.convert_hf_eomt import main

if __name__ == "__main__":
    sys.exit(main())
