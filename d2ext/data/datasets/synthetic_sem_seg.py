"""Semantic versions of the synthetic shapes dataset, for the semantic quickstart and tests.

The images are those of ``d2ext_synthetic_train`` / ``_val`` (same generator, same cache); their
instance masks are painted into class-id PNGs beside them, and the pairs are loaded through the
image-folder / mask-folder loader that user datasets use:

* ``d2ext_synthetic_sem_seg_{train,val}``: background + the 4 shapes (an N-class example);
* ``d2ext_synthetic_fg_{train,val}``: background / foreground (like person / background).
"""
import os
import shutil
import tempfile

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .sem_seg_folders import load_sem_seg_folders, stable_colors
from .synthetic_shapes import SYNTHETIC_CLASSES

SYNTHETIC_SEM_SEG_VARIANTS = {
    "sem_seg": ["background"] + SYNTHETIC_CLASSES,
    "fg": ["background", "foreground"],
}


def _paint_masks(records, mask_dir, variant):
    """One class-id PNG per image; shape pixels get their class (or 1 for "fg")."""
    os.makedirs(mask_dir)
    for record in records:
        label = np.zeros((record["height"], record["width"]), dtype=np.uint8)
        for ann in record.get("annotations", []):  # visible masks: they do not overlap
            rle = dict(ann["segmentation"])
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
            label[mask_util.decode(rle) > 0] = 1 if variant == "fg" else ann["category_id"] + 1
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        Image.fromarray(label, mode="L").save(os.path.join(mask_dir, stem + ".png"))


def _load(name, split, variant):
    instance_name = f"d2ext_synthetic_{split}"
    records = DatasetCatalog.get(instance_name)  # generates the images on first use
    image_root = MetadataCatalog.get(instance_name).image_root
    mask_dir = os.path.join(os.path.dirname(image_root), f"masks_{variant}")
    if not os.path.isdir(mask_dir):
        # Painted in a temporary sibling and renamed into place, like the images, so parallel
        # processes and interrupted runs never see half a folder.
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(image_root))
        try:
            _paint_masks(records, os.path.join(tmp, "masks"), variant)
            os.replace(os.path.join(tmp, "masks"), mask_dir)
        except OSError:
            if not os.path.isdir(mask_dir):
                raise  # not merely another process finishing first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_sem_seg_folders(name, image_root, mask_dir)


def register_synthetic_sem_seg(ignore_value=255):
    """Register the four semantic synthetic datasets. They follow whatever sizes the instance
    datasets are registered with (DATASETS.SYNTHETIC), read when first used."""
    for variant, classes in SYNTHETIC_SEM_SEG_VARIANTS.items():
        for split in ("train", "val"):
            name = f"d2ext_synthetic_{variant}_{split}"
            if name in DatasetCatalog:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, lambda n=name, s=split, v=variant: _load(n, s, v))
            MetadataCatalog.get(name).set(
                evaluator_type="sem_seg", stuff_classes=list(classes),
                stuff_colors=stable_colors(len(classes)), ignore_label=ignore_value)
