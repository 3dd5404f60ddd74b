#!/usr/bin/env python
"""Train or evaluate a d2ext model with detectron2's trainer. The code is d2ext/cli/train_net.py;
--help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.train_net import cli

if __name__ == "__main__":
    sys.exit(cli())
