"""Few-shot class prototypes: DINO patch features averaged inside reference masks.

References come from a registered detectron2 dataset (the first ``shots`` annotated masks of
each class) or from (image, mask, class) files. Collecting them only reads annotations, so a
dataset without masks or without a class fails at model construction; features are computed
later, on the model's device (:meth:`DinoSamPrompt.compute_prototypes`).
"""
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image

from ...data.datasets.coco_instances import has_mask
from ...data.image_io import read_image_any
from ...errors import UserError
from ..backbone.archs import DINO_STRIDE


class PrototypeError(UserError):
    """Prototype references that cannot define every requested class."""


@dataclass
class Reference:
    """One reference mask: ``file_name`` of the image, the mask (a COCO segmentation with the
    image's ``height``/``width``, or a mask image file) and the output class index."""
    file_name: str
    class_index: int
    segmentation: object = None
    height: int = 0
    width: int = 0
    mask_file: str = ""

    def load(self):
        """(image (H, W, 3) uint8 RGB, mask (H, W) bool)."""
        image = read_image_any(self.file_name, format="RGB")  # as the test images are read
        if self.mask_file:
            # A label, not an image: detectron2's reader does not rescale 16-bit values, so
            # every non-zero pixel stays in the mask.
            mask = read_image(self.mask_file, format="L")[..., 0] > 0
            if mask.shape != image.shape[:2]:
                raise PrototypeError(f"reference mask {self.mask_file!r} is {mask.shape} but its "
                                     f"image {self.file_name!r} is {image.shape[:2]}")
            return image, mask
        return image, _decode_segmentation(self.segmentation, self.height, self.width)


def _decode_segmentation(segmentation, height, width):
    if isinstance(segmentation, list):  # polygons
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_util.frPyObjects(segmentation, height, width)  # uncompressed RLE
    else:
        rle = segmentation
    return mask_util.decode(rle).astype(bool)


def collect_references(dataset="", shots=5, files=(), class_names=(), index_names=()):
    """References for the classes to recognise, and the class names output indices refer to.

    ``dataset``: a registered dataset name; its ``thing_classes`` are the class names unless
    ``class_names`` restricts them. ``files``: (image, mask image, class name) triples; their
    classes are looked up in the names (or, without dataset and ``class_names``, in
    ``index_names``, e.g. the test dataset's classes), or appended. Raises
    :class:`PrototypeError` naming a requested class that has no reference mask.
    """
    names = list(class_names)
    required = set(names)
    references = []
    if dataset:
        thing_classes = list(getattr(MetadataCatalog.get(dataset), "thing_classes", []))
        for name in names:
            if name not in thing_classes:
                raise PrototypeError(f"MODEL.SAM_PROMPT.PROTOTYPE_CLASSES: class {name!r} is not "
                                     f"a class of dataset {dataset!r} ({thing_classes})")
        names = names or thing_classes
        required = set(names)
        wanted = {thing_classes.index(n): n for n in names}
        counts = dict.fromkeys(wanted, 0)
        for record in DatasetCatalog.get(dataset):
            for annotation in record.get("annotations", []):
                c = annotation["category_id"]
                if counts.get(c, shots) < shots and has_mask(annotation.get("segmentation")):
                    counts[c] += 1
                    references.append(Reference(record["file_name"], names.index(wanted[c]),
                                                annotation["segmentation"], record["height"],
                                                record["width"]))
            if all(n >= shots for n in counts.values()):
                break
        for c, n in counts.items():
            if n == 0:
                raise PrototypeError(
                    f"class {wanted[c]!r} has no annotated mask in dataset {dataset!r} "
                    f"(MODEL.SAM_PROMPT.PROTOTYPE_DATASET): prototypes need instance masks of "
                    f"every class; register a dataset with masks of {wanted[c]!r}, restrict "
                    f"MODEL.SAM_PROMPT.PROTOTYPE_CLASSES, or give reference masks.")
    names = names or list(index_names)
    for entry in files:
        if len(entry) != 3:
            raise PrototypeError(f"MODEL.SAM_PROMPT.PROTOTYPE_REFERENCES entry {entry!r}: "
                                 "expected [image file, mask image file, class name]")
        image, mask, name = entry
        if name not in names:
            names.append(name)
        references.append(Reference(image, names.index(name), mask_file=mask))
    missing = sorted(required - {names[r.class_index] for r in references})
    if missing:
        raise PrototypeError(f"class {missing[0]!r} has no reference mask: give one in "
                             "MODEL.SAM_PROMPT.PROTOTYPE_REFERENCES or PROTOTYPE_DATASET")
    if not names:
        raise PrototypeError("MODEL.SAM_PROMPT.METHOD 'prototypes' needs PROTOTYPE_DATASET or "
                             "PROTOTYPE_REFERENCES")
    return references, names


def mask_coverage(mask, grid_size):
    """The fraction of each stride-16 cell covered by ``mask`` (H, W) bool: (h, w) float."""
    h, w = grid_size
    padded = F.pad(mask[None, None].float(),
                   (0, w * DINO_STRIDE - mask.shape[1], 0, h * DINO_STRIDE - mask.shape[0]))
    return F.avg_pool2d(padded, DINO_STRIDE)[0, 0]


def average_prototypes(features, coverages, class_indices, class_names):
    """Prototypes of the referenced classes: (K, C) L2-normalised, and their class indices
    (K,). Per class, the mean of the (normalised) patch features of its references, weighted
    by mask coverage. ``features``: list of (C, h, w); ``coverages``: list of (h, w)."""
    classes = sorted(set(class_indices))
    sums = features[0].new_zeros(len(classes), features[0].shape[0])
    for feature, coverage, c in zip(features, coverages, class_indices):
        sums[classes.index(c)] += (feature * coverage).sum((1, 2))
    for row, c in enumerate(classes):
        if not sums[row].any():
            raise PrototypeError(f"the reference masks of class {class_names[c]!r} are empty "
                                 "after resizing to the test size; use larger reference masks")
    return F.normalize(sums, dim=1), torch.tensor(classes, device=sums.device)


def resize_reference(image, mask, min_size, max_size):
    """The reference resized like test images (shortest edge ``min_size``, longest at most
    ``max_size``) so its patches see objects at the test scale."""
    transform = T.ResizeShortestEdge(min_size, max_size).get_transform(image)
    resized_mask = transform.apply_segmentation(mask.astype(np.uint8)) > 0
    return transform.apply_image(image), resized_mask
