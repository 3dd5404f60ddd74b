"""d2ext: DINOv2/DINOv3 backbones and foundation-model heads for detectron2.

Importing the package registers its backbones, meta-architectures and datasets in detectron2's
registries.
"""
from . import data, modeling  # noqa: F401  (registration)
from .config import add_d2ext_config, get_d2ext_cfg

__version__ = "0.1.0"
