"""Any COCO-format instance dataset (json + image folder) registered without code."""
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A registered dataset's files are missing or malformed; the message names which."""


def _check_categories(json_file):
    with open(json_file) as f:
        try:
            data = json.load(f)
        except ValueError as err:
            raise DatasetError(f"{json_file}: not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: holds a JSON {type(data).__name__}; a COCO instance "
                           "json is an object with 'images', 'annotations' and 'categories'.")
    categories = data.get("categories")
    if not categories:
        raise DatasetError(f"{json_file}: no 'categories' list; COCO instance json needs one "
                           "entry {'id': int, 'name': str} per class.")
    unnamed = [c.get("id") for c in categories if not str(c.get("name", "")).strip()]
    if unnamed:
        raise DatasetError(f"{json_file}: categories with ids {unnamed} have no 'name'; give "
                           "every category a name (it labels the class in metrics and plots).")


def load_coco_instances(name, json_file, image_root):
    """``load_coco_json`` with errors that name the file, and missing images skipped."""
    _check_categories(json_file)
    try:
        dicts = load_coco_json(json_file, image_root, name)
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise DatasetError(f"{json_file}: not a valid COCO instance json "
                           f"({type(err).__name__}: {err}).") from err
    present = [d for d in dicts if os.path.isfile(d["file_name"])]
    if dicts and not present:
        raise DatasetError(
            f"dataset {name!r}: none of the {len(dicts)} images listed in {json_file} is under "
            f"the image root {image_root} (e.g. {dicts[0]['file_name']}). Point the image root "
            "at the folder that holds the files named in the json's 'file_name' fields.")
    if len(present) < len(dicts):
        missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
        logger.warning(f"dataset {name!r}: skipping {len(missing)} of {len(dicts)} images missing "
                       f"under {image_root} (e.g. {missing[:3]}).")
    dropped = 0
    for d in present:  # every d2ext head learns from masks: an instance without one is dropped
        kept = [a for a in d.get("annotations", []) if _has_mask(a.get("segmentation"))]
        dropped += len(d.get("annotations", [])) - len(kept)
        d["annotations"] = kept
    if dropped:
        logger.warning(f"dataset {name!r}: skipping {dropped} annotations of {json_file} without "
                       "a mask (no 'segmentation', or no polygon with 3 or more points).")
    return present


def _has_mask(segmentation):
    if isinstance(segmentation, dict):  # RLE
        return bool(segmentation.get("counts"))
    return isinstance(segmentation, list) and any(
        isinstance(p, list) and len(p) >= 6 for p in segmentation)


def register_coco_dataset(name, json_file, image_root, metadata=None):
    """Register a COCO-format instance dataset under ``name`` (train or test alike).

    The json and image folder must exist now; the json is read lazily, on first use, with
    :func:`load_coco_instances`. Re-registering the same name with the same files is a no-op.
    """
    if not os.path.isfile(json_file):
        raise DatasetError(f"dataset {name!r}: annotation file {json_file} does not exist.")
    if not os.path.isdir(image_root):
        raise DatasetError(f"dataset {name!r}: image root {image_root} is not a directory.")
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == json_file and \
                getattr(meta, "image_root", None) == image_root:
            return
        raise DatasetError(f"dataset name {name!r} is already registered with other files "
                           f"({getattr(meta, 'json_file', '?')}); choose another name.")
    DatasetCatalog.register(name, lambda: load_coco_instances(name, json_file, image_root))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", **(metadata or {}))
