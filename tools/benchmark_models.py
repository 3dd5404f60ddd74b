#!/usr/bin/env python
"""End-to-end CPU time of detectron2's Mask R-CNN, transformers' DETR and RT-DETR and each d2ext
head at DINOv3 ViT-S on one image, in one interleaved run, with each model's published accuracy.
The code is d2ext/cli/benchmark_models.py; --help lists the options."""
import sys

import _known_warnings  # noqa: F401  (before d2ext: silences known dependency warnings)
from d2ext.cli.benchmark_models import main

if __name__ == "__main__":
    sys.exit(main())
