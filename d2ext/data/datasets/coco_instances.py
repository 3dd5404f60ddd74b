"""Any COCO-format instance dataset (json + image folder) registered without code."""
import json
import logging
import mmap
import os
import re

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ...errors import UserError

logger = logging.getLogger(__name__)


class DatasetError(UserError):
    """A registered dataset's files are missing or malformed; the message names which."""


def _check_json(json_file):
    """Checks the json before detectron2's ``load_coco_json`` reads it: the categories, and that
    image and annotation ids are unique, since pycocotools' index keeps one image per id and
    gives it the annotations of all images sharing that id."""
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
    if not data.get("images"):
        raise DatasetError(f"{json_file}: no 'images'; a COCO instance json lists its images as "
                           "{'id', 'file_name', 'height', 'width'} entries.")
    first = _first_duplicate(_entries(data, "images"))
    if first:
        a, b = (repr(i.get("file_name")) for i in first)
        raise DatasetError(f"{json_file}: image id {first[0]['id']!r} is given to two images, "
                           f"{a} and {b}; give every image its own 'id' (and point each "
                           "annotation's 'image_id' at its image).")
    first = _first_duplicate(_entries(data, "annotations"))
    if first:
        a, b = (repr(i.get("image_id")) for i in first)
        raise DatasetError(f"{json_file}: annotation id {first[0]['id']!r} is given to two "
                           f"annotations, of image ids {a} and {b}; give every annotation its "
                           "own 'id'.")


def _entries(data, key):
    """The dict entries of ``data[key]`` that have an 'id' (load_coco_json reports the rest)."""
    entries = data.get(key)
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and "id" in e]


def _first_duplicate(entries):
    """The first two entries sharing an id, or None."""
    seen = {}
    for entry in entries:
        key = entry["id"]
        if not isinstance(key, (int, float, str)):  # odd ids: load_coco_json reports them
            continue
        if key in seen:
            return seen[key], entry
        seen[key] = entry
    return None


def load_coco_instances(name, json_file, image_root):
    """``load_coco_json`` with errors that name the file, and missing images skipped."""
    _check_json(json_file)
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
        kept = [a for a in d.get("annotations", []) if has_mask(a.get("segmentation"))]
        dropped += len(d.get("annotations", [])) - len(kept)
        d["annotations"] = kept
    if dropped:
        logger.warning(f"dataset {name!r}: skipping {dropped} annotations of {json_file} without "
                       "a mask (no 'segmentation', or no polygon with 3 or more points).")
    return present


def has_mask(segmentation):
    """Whether an annotation's "segmentation" defines a mask: an RLE with counts, or a list of
    polygons of which at least one has 3 or more points. Anything else (missing or empty, a
    flat list of coordinates, an RLE without counts) defines none, and would fail or give an
    empty mask where training and the SAM prototypes decode it."""
    if isinstance(segmentation, dict):  # RLE
        return bool(segmentation.get("counts"))
    return isinstance(segmentation, list) and any(
        isinstance(p, (list, tuple, np.ndarray)) and len(p) >= 6 for p in segmentation)


# A "categories" key opening a list; where it is the json's own key is checked after matching.
_CATEGORIES_KEY = re.compile(rb'"categories"\s*:\s*\[')


def read_categories(json_file):
    """The "categories" list of a COCO json, or None where the file has no readable one (the
    dataset's load then says what is wrong).

    Only that list is decoded: every tool registers the datasets, also those that never load
    them, and decoding a large json's images and annotations here would be wasted on them. A
    match counts if its opening quote is not escaped (so the key is not text inside a string);
    a json with no such key, or more than one (nested ones), is decoded whole.
    """
    try:
        with open(json_file, "rb") as f, \
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found = [m.end() - 1 for m in _CATEGORIES_KEY.finditer(data)
                     if _unescaped(data, m.start())]
            if len(found) == 1:
                categories = _decode_from(data, found[0])
            else:  # nested keys, or none found in UTF-8 (another encoding): decode it all
                categories = json.loads(data[:]).get("categories")
    except (OSError, ValueError, AttributeError):  # unreadable, empty, not JSON, not an object
        return None
    return categories if isinstance(categories, list) else None


def _unescaped(data, quote):
    """Whether the '"' at offset ``quote`` is a string delimiter: preceded by an even number of
    backslashes."""
    start = quote
    while start > 0 and data[start - 1:start] == b"\\":
        start -= 1
    return (quote - start) % 2 == 0


def _decode_from(data, start):
    """The JSON value at byte ``start`` of ``data``, read in growing windows (the value's end is
    unknown until it decodes)."""
    size = 1 << 16
    while True:
        # a window may end inside a character; that end is past a value that decodes
        text = data[start:start + size].decode("utf-8", errors="replace")
        try:
            return json.JSONDecoder().raw_decode(text)[0]
        except ValueError:
            if start + size >= len(data):
                raise
            size *= 4


def coco_class_metadata(categories):
    """``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` as detectron2's
    ``load_coco_json`` sets them from a json's categories (ordered by id, the last of a repeated
    id kept, as pycocotools indexes them), or {} for categories it could not load (no list of
    named categories with comparable ids)."""
    try:
        by_id = {c["id"]: c for c in categories}
        ids = sorted(by_id)
        names = [by_id[i]["name"] for i in ids]
    except (KeyError, TypeError):
        return {}
    if not ids or not all(str(n).strip() for n in names):
        return {}
    return dict(thing_classes=names,
                thing_dataset_id_to_contiguous_id={i: k for k, i in enumerate(ids)})


def register_coco_dataset(name, json_file, image_root, metadata=None):
    """Register a COCO-format instance dataset under ``name`` (train or test alike).

    The json and image folder must exist now. Its classes (``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id``, as ``load_coco_json`` sets them) are read from its
    "categories" now, so that a model built before the dataset is loaded numbers its classes as
    the evaluator does; the rest of the json is read lazily, on first use, with
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
    classes = coco_class_metadata(read_categories(json_file) or [])
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", **{**classes, **(metadata or {})})
