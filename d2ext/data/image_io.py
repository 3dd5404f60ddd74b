"""Reading user images the way users expect, on top of detectron2's detection_utils."""
import logging

import numpy as np
from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from PIL import Image


class ImageReadError(OSError):
    """The file could not be read as an image; the message names it."""


def read_image_any(path, format="BGR"):
    """Read ``path`` as an (H, W, 3) uint8 array in ``format`` ("BGR" or "RGB").

    Beyond ``detectron2.data.detection_utils.read_image``: EXIF orientation is applied,
    grayscale is replicated to three channels, transparent pixels are composited on white
    (rather than showing whatever colour they hide), and 16-bit / 32-bit / float grayscale is
    scaled to 8 bits rather than clipped.
    """
    try:
        with Image.open(path) as image:
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
