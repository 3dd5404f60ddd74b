"""Export the tagged splits of a FiftyOne dataset as COCO instance datasets for d2ext.

Each split becomes ``EXPORT_DIR/<split>/labels.json`` + ``EXPORT_DIR/<split>/data/``, with
masks as compressed RLE (exact, unlike polygons; ``INPUT.MASK_FORMAT: bitmask`` reads it, as
d2ext's Base config sets) and category ids 1..N in the dataset's class order, so model class i
is ``classes[i]``. ``tools/train_net.py --register-coco`` registers the result with no code.
"""
import json
import logging
import os
import shlex
import shutil

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .fiftyone_db import CurationError
from .open_images import GT_FIELD

logger = logging.getLogger(__name__)


def _split_views(collection, splits, reject_tag):
    """{split: view of the samples tagged ``split``}, rejected samples left out; refuses samples
    tagged with two splits and empty splits before anything is written."""
    kept = collection.match_tags(reject_tag, bool=False) if reject_tag else collection
    views = {s: kept.match_tags(s) for s in splits}
    seen = {}
    for split, view in views.items():
        for sample_id in view.values("id"):
            if sample_id in seen:
                raise CurationError(f"sample {sample_id} is tagged both {seen[sample_id]!r} and "
                                    f"{split!r}; keep one split tag per sample.")
            seen[sample_id] = split
    counts = {s: len(v) for s, v in views.items()}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise CurationError(
            f"no samples tagged {empty} in {collection.name!r} (tag counts: {counts}, "
            f"{reject_tag!r}-tagged samples excluded); nothing exported. Tag samples in the App "
            "(tools/curate_fiftyone.py app) or export only the non-empty splits with --splits.")
    return views


def _coco_annotations(detections, classes, width, height, image_id, first_ann_id):
    """COCO annotation dicts (RLE masks, xywh pixel boxes) for the detections with masks."""
    anns = []
    for det in detections:
        if det.label not in classes or not det.has_mask:
            continue
        full = det.to_segmentation(frame_size=(width, height), target=1).mask > 0
        rle = mask_util.encode(np.asfortranarray(full.astype(np.uint8)))
        area = float(mask_util.area(rle))
        if area == 0:  # a degenerate mask teaches nothing and breaks box targets
            continue
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, w, h = det.bounding_box
        anns.append(dict(id=first_ann_id + len(anns), image_id=image_id,
                         category_id=classes.index(det.label) + 1, segmentation=rle, area=area,
                         bbox=[x * width, y * height, w * width, h * height], iscrowd=0))
    return anns


def _export_split(view, split_dir, classes, gt_field):
    data_dir = os.path.join(split_dir, "data")
    os.makedirs(data_dir)
    images, annotations, missing, used_names = [], [], 0, set()
    for filepath, labels in zip(*view.values(["filepath", gt_field])):
        if not os.path.isfile(filepath):
            missing += 1
            continue
        with Image.open(filepath) as im:
            width, height = im.size
        name = os.path.basename(filepath)
        if name in used_names:  # same file name from two source folders
            name = f"{len(images)}_{name}"
        used_names.add(name)
        shutil.copy2(filepath, os.path.join(data_dir, name))
        image_id = len(images) + 1
        images.append(dict(id=image_id, file_name=name, width=width, height=height))
        annotations += _coco_annotations(labels.detections if labels else [], classes, width,
                                         height, image_id, len(annotations) + 1)
    json_file = os.path.join(split_dir, "labels.json")
    with open(json_file, "w") as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=[dict(id=i + 1, name=c) for i, c in enumerate(classes)]), f)
    return dict(json_file=json_file, image_root=data_dir, images=len(images),
                annotations=len(annotations), missing_images=missing)


def export_coco_splits(collection, export_dir, splits=("train", "val"), reject_tag="reject",
                       gt_field=GT_FIELD, classes=None, overwrite=False):
    """Write one COCO instance dataset per split tag of ``collection`` (a dataset or view).

    Images missing on disk are skipped and counted. Raises :class:`CurationError` (before
    writing anything) for empty splits, samples in two splits, or existing output.

    Returns:
        {split: {"json_file", "image_root", "images", "annotations", "missing_images"}}
    """
    classes = list(classes or collection.default_classes or [])
    if not classes:
        raise CurationError(f"dataset {collection.name!r} has no default_classes; pass --classes.")
    if not collection.has_field(gt_field):
        raise CurationError(f"dataset {collection.name!r} has no label field {gt_field!r} "
                            f"(fields: {sorted(collection.get_field_schema())}).")
    views = _split_views(collection, splits, reject_tag)
    for split in splits:
        split_dir = os.path.join(export_dir, split)
        if os.path.exists(split_dir):
            if not overwrite:
                raise CurationError(f"{split_dir} already exists; pass --overwrite to replace it.")
            shutil.rmtree(split_dir)
    result = {}
    for split, view in views.items():
        result[split] = _export_split(view, os.path.join(export_dir, split), classes, gt_field)
        if result[split]["missing_images"]:
            logger.warning(f"split {split!r}: skipped {result[split]['missing_images']} "
                           "sample(s) whose image file is missing on disk.")
    return result


def train_command(exported, num_classes, config_file="configs/quickstart.yaml", prefix="fo",
                  output_dir=None, num_classes_key="MODEL.ROI_HEADS.NUM_CLASSES"):
    """The ``tools/train_net.py`` command line that trains on ``exported`` (from
    :func:`export_coco_splits`): "train" is trained on, the other splits are tested;
    ``num_classes_key`` is the config's class-count key (``d2ext.engine.num_classes_key``)."""
    args = ["python", "tools/train_net.py", "--config-file", shlex.quote(config_file)]
    names = {}
    for split, info in exported.items():
        names[split] = f"{prefix}_{split}"
        args += ["--register-coco", shlex.quote(names[split]), shlex.quote(info["json_file"]),
                 shlex.quote(info["image_root"])]
    train = tuple(n for s, n in names.items() if s == "train")
    test = tuple(n for s, n in names.items() if s != "train")
    # Dataset names are plain words, so the tuples read as in detectron2's docs: "('x',)".
    args += ["DATASETS.TRAIN", f'"{train!r}"', "DATASETS.TEST", f'"{test!r}"',
             num_classes_key, str(num_classes),
             "OUTPUT_DIR", shlex.quote(output_dir or f"output/{prefix}")]
    return " ".join(args)
