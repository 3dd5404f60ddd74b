#!/usr/bin/env python
"""Train or evaluate a d2ext model with detectron2's trainer. The code is d2ext/cli/train_net.py;
--help lists the options."""
import sys

from d2ext.cli.train_net import cli

if __name__ == "__main__":
    sys.exit(cli())
