from . import (
    dataset_mappers,  # noqa: F401,E402  (Mask2Former-style mappers)
    datasets,  # noqa: F401  (registers the built-in datasets)
)
from .image_io import read_image_any
