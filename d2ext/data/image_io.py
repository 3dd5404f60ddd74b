"""Reading user images the way users expect, on top of detectron2's detection_utils.

:func:`read_image_any` is d2ext's one image reader: the training and evaluation mappers, the
demo, ``predict`` and the SAM prototype references all read images through it, so a model is
evaluated and used on the pixels it was trained on. Label images (class ids, masks) are not
images in this sense: they are read with detectron2's ``read_image``, which never rescales.
"""
import logging
import os

import numpy as np
from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image


class ImageReadError(OSError):
    """The file could not be read as an image; the message names it."""


def read_image_any(path, format="BGR"):
    """Read ``path`` as an (H, W, 3) uint8 array in ``format`` ("BGR" or "RGB"; detectron2's
    other ``read_image`` formats work too). Paths go through detectron2's ``PathManager``, as
    in ``read_image``. The first frame of an animation is read.

    Like ``detectron2.data.detection_utils.read_image``, EXIF orientation is applied and
    grayscale is replicated to three channels; beyond it, transparent pixels are composited on
    white (rather than showing whatever colour they hide), and 16-bit / 32-bit / float grayscale
    is scaled to 8 bits rather than clipped.
    """
    try:
        with PathManager.open(os.fspath(path), "rb") as f, Image.open(f) as image:
            if getattr(image, "n_frames", 1) > 1:
                logging.getLogger(__name__).info(
                    f"{path}: {image.n_frames} frames (an animation); using the first")
            image.load()
            image = _apply_exif_orientation(image)
    except Exception as err:  # PIL raises many types for undecodable files
        raise ImageReadError(f"{path}: not a readable image ({type(err).__name__}: {err})") \
            from err
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    return convert_PIL_to_numpy(image.convert("RGB"), format)
