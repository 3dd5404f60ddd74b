#!/usr/bin/env python
"""Export a d2ext model to ONNX or torch.export for serving (model-only graph, export.json).
The code is d2ext/cli/export_model.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.export_model import main

if __name__ == "__main__":
    sys.exit(main())
