"""Any COCO panoptic-format dataset (panoptic json + segment PNG folder + image folder)
registered without code, as detectron2's ``register_coco_panoptic`` registers COCO's."""
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_instances import DatasetError, read_categories
from .sem_seg_folders import stable_colors

logger = logging.getLogger(__name__)


def panoptic_class_metadata(categories, json_file="the panoptic json"):
    """The class metadata of a panoptic json's "categories" ({"id", "name", "isthing"}), as
    detectron2 sets it for ``coco_2017_*_panoptic``: every class, things and stuff, is numbered
    by its position among the categories sorted by id; ``thing_classes`` and ``stuff_classes``
    both list all of them (so a Mask2Former-style model's K classes are named either way), and
    ``thing_dataset_id_to_contiguous_id`` / ``stuff_dataset_id_to_contiguous_id`` split the ids
    by "isthing" (COCOPanopticEvaluator maps predictions back with them)."""
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{json_file}: no 'categories' list; a COCO panoptic json needs one "
                           "entry {'id': int, 'name': str, 'isthing': 0 or 1} per class.")
    bad = [c for c in categories if not isinstance(c, dict) or not isinstance(c.get("id"), int)
           or not str(c.get("name", "")).strip() or c.get("isthing") not in (0, 1, True, False)]
    if bad:
        raise DatasetError(f"{json_file}: category {bad[0]!r} needs an int 'id', a 'name' and "
                           "'isthing' 0 (stuff) or 1 (thing).")
    ids = [c["id"] for c in categories]
    if len(set(ids)) < len(ids):
        raise DatasetError(f"{json_file}: category ids {sorted(ids)} repeat; give every category "
                           "its own 'id'.")
    categories = sorted(categories, key=lambda c: c["id"])
    names = [str(c["name"]) for c in categories]
    colors = [list(c["color"]) if isinstance(c.get("color"), (list, tuple)) and
              len(c["color"]) == 3 else None for c in categories]
    fallback = stable_colors(len(categories))
    colors = [c if c is not None else list(f) for c, f in zip(colors, fallback)]
    return dict(
        thing_classes=names, stuff_classes=list(names), thing_colors=colors,
        stuff_colors=[list(c) for c in colors],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)
                                           if c["isthing"]},
        stuff_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)
                                           if not c["isthing"]})


def load_coco_panoptic(name, json_file, panoptic_root, image_root, meta):
    """Dataset dicts of a COCO panoptic json: "file_name" (the json's image entry, under
    ``image_root``), "image_id", "height", "width", "pan_seg_file_name" (the annotation's PNG,
    under ``panoptic_root``) and "segments_info" with contiguous "category_id" and "isthing".

    detectron2's ``load_coco_panoptic_json`` assumes every image is a ``.jpg`` named like its
    PNG (COCO's layout) and asserts on mistakes; this reads the image names from the json's
    "images" and names what is wrong. Every annotated image must be present, since
    COCOPanopticEvaluator scores every image of the json."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except ValueError as err:
        raise DatasetError(f"{json_file}: not valid JSON ({err}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{json_file}: no 'annotations' list; a COCO panoptic json has "
                           "'images', 'annotations' ({'image_id', 'file_name', 'segments_info'})"
                           " and 'categories'.")
    images = {i.get("id"): i for i in data.get("images", []) if isinstance(i, dict)}
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    records, missing = [], []
    for ann in data["annotations"]:
        image = images.get(ann.get("image_id"))
        if image is None or "file_name" not in ann:
            raise DatasetError(f"{json_file}: annotation {str(ann)[:80]} has no 'file_name' or "
                               "an 'image_id' that no entry of 'images' has.")
        segments = []
        for segment in ann.get("segments_info", []):
            category = segment.get("category_id")
            if category not in things and category not in stuff:
                raise DatasetError(f"{json_file}: image id {image['id']!r} has a segment of "
                                   f"category_id {category!r}, which 'categories' lacks.")
            if "id" not in segment or "iscrowd" not in segment:
                raise DatasetError(f"{json_file}: a segment of image id {image['id']!r} lacks "
                                   "'id' or 'iscrowd' (COCO panoptic gives both; the PQ "
                                   "evaluation reads them).")
            segments.append({**segment, "category_id": things.get(category, stuff.get(category)),
                             "isthing": category in things})
        record = {"file_name": os.path.join(image_root, image["file_name"]),
                  "image_id": image["id"],
                  "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
                  "segments_info": segments}
        if "height" in image and "width" in image:
            record.update(height=image["height"], width=image["width"])
        missing += [p for p in (record["file_name"], record["pan_seg_file_name"])
                    if not os.path.isfile(p)]
        records.append(record)
    if missing:
        raise DatasetError(f"dataset {name!r}: {len(missing)} files that {json_file} names are "
                           f"missing (e.g. {missing[0]}); image_dir must hold the 'images' "
                           "file_names and the PNG folder the 'annotations' file_names.")
    if not records:
        raise DatasetError(f"dataset {name!r}: {json_file} has no annotations.")
    return records


def register_coco_panoptic_dataset(name, panoptic_json, panoptic_root, image_root,
                                   metadata=None):
    """Register a COCO panoptic-format dataset under ``name`` (train or test alike), with the
    metadata detectron2's ``register_coco_panoptic`` sets (``evaluator_type``
    "coco_panoptic_seg", ``panoptic_json``, ``panoptic_root``, ``image_root``,
    ``ignore_label``, ``label_divisor``) and the classes of its "categories"
    (:func:`panoptic_class_metadata`), read now; the annotations are read on first use.
    ``metadata`` adds or overrides fields. Re-registering the same name with the same files is
    a no-op."""
    if not os.path.isfile(panoptic_json):
        raise DatasetError(f"dataset {name!r}: panoptic json {panoptic_json} does not exist.")
    for what, path in (("panoptic PNG folder", panoptic_root), ("image folder", image_root)):
        if not os.path.isdir(path):
            raise DatasetError(f"dataset {name!r}: {what} {path} is not a directory.")
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "panoptic_json", None), getattr(meta, "panoptic_root", None),
                getattr(meta, "image_root", None)) == (panoptic_json, panoptic_root, image_root):
            return
        raise DatasetError(f"dataset name {name!r} is already registered with other files; "
                           "choose another name.")
    classes = panoptic_class_metadata(read_categories(panoptic_json), panoptic_json)
    DatasetCatalog.register(name, lambda: load_coco_panoptic(name, panoptic_json, panoptic_root,
                                                             image_root, classes))
    MetadataCatalog.get(name).set(
        panoptic_json=panoptic_json, panoptic_root=panoptic_root, image_root=image_root,
        evaluator_type="coco_panoptic_seg", ignore_label=255, label_divisor=1000,
        **{**classes, **(metadata or {})})
