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

from .calibration import keep_calibrated
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


def _full_mask(det, width, height):
    """``det``'s instance mask on the whole (height, width) image, bool. FiftyOne stores the
    mask cropped to the box; the crop goes back at the pixel where FiftyOne's own rendering puts
    the box's corner (``int(size * corner)``), at its own size. FiftyOne's ``to_segmentation``
    instead resizes the crop to ``int(size * (x + w)) - int(size * x)`` pixels, which the float
    sum ``x + w`` can make one pixel more or less than the crop: a resampled, shifted mask. A
    crop more than a pixel off its box was made at another resolution (a mask_path image, other
    tools): only resampling places it, so FiftyOne's rendering is used then."""
    crop = det.get_mask()
    x, y, w, h = det.bounding_box
    x0, y0 = int(width * x), int(height * y)
    box_w, box_h = int(width * (x + w)) - x0, int(height * (y + h)) - y0
    pasteable = crop is not None and crop.ndim == 2 and abs(crop.shape[0] - box_h) <= 1 and \
        abs(crop.shape[1] - box_w) <= 1 and 0 <= x0 < width and 0 <= y0 < height
    if not pasteable:
        return det.to_segmentation(frame_size=(width, height), target=1).mask > 0
    full = np.zeros((height, width), bool)
    crop = crop[:height - y0, :width - x0] > 0  # a crop a pixel past the image's edge
    full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return full


def _coco_annotations(detections, classes, width, height, image_id, first_ann_id):
    """COCO annotation dicts (RLE masks, xywh pixel boxes) for the detections with masks."""
    anns = []
    for det in detections:
        if det.label not in classes or not det.has_mask:
            continue
        full = _full_mask(det, width, height)
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


# labels.json's "info" carries this key: --overwrite replaces only a folder that it marks.
EXPORT_MARK = "d2ext_export"


def _not_exported(split_dir):
    """The paths in ``split_dir`` that no d2ext export wrote: an export is labels.json (marked
    EXPORT_MARK) and data/ holding only the images labels.json lists."""
    if os.path.islink(split_dir) or not os.path.isdir(split_dir):
        return [split_dir]
    json_file, data_dir = os.path.join(split_dir, "labels.json"), os.path.join(split_dir, "data")
    try:
        with open(json_file) as f:
            labels = json.load(f)
        names = {image["file_name"] for image in labels["images"]} \
            if labels.get("info", {}).get(EXPORT_MARK) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        names = None
    foreign = [os.path.join(split_dir, n) for n in sorted(os.listdir(split_dir))
               if n not in ("labels.json", "data") or (n == "labels.json" and names is None)]
    if os.path.isdir(data_dir) and not os.path.islink(data_dir):
        foreign += [os.path.join(data_dir, n) for n in sorted(os.listdir(data_dir))
                    if names is None or n not in names]
    return foreign


def _export_split(view, split_dir, classes, gt_field, calibrated=None):
    data_dir = os.path.join(split_dir, "data")
    os.makedirs(data_dir)
    images, annotations, missing, used_names = [], [], 0, set()
    fields = ["filepath", gt_field] + (["tags", calibrated["gt_field"]] if calibrated else [])
    for filepath, labels, *review in zip(*view.values(fields)):
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
        detections = labels.detections if labels else []
        if calibrated:  # reviewed samples: their reviewed labels; the rest: calibrated ones
            tags, reviewed = review
            detections = (reviewed.detections if reviewed else []) \
                if set(tags or []) & set(calibrated["review_tags"]) \
                else keep_calibrated(detections, calibrated["thresholds"])
        annotations += _coco_annotations(detections, classes, width, height, image_id,
                                         len(annotations) + 1)
    json_file = os.path.join(split_dir, "labels.json")
    with open(json_file, "w") as f:
        json.dump(dict(info={"description": f"d2ext export of FiftyOne dataset "
                                            f"{view.dataset_name!r}, field {gt_field!r}",
                             EXPORT_MARK: True},
                       images=images, annotations=annotations,
                       categories=[dict(id=i + 1, name=c) for i, c in enumerate(classes)]), f)
    return dict(json_file=json_file, image_root=data_dir, images=len(images),
                annotations=len(annotations), missing_images=missing)


def export_coco_splits(collection, export_dir, splits=("train", "val"), reject_tag="reject",
                       gt_field=GT_FIELD, classes=None, overwrite=False, thresholds=None):
    """Write one COCO instance dataset per split tag of ``collection`` (a dataset or view).

    ``thresholds`` (the file of ``calibrate``, read with ``load_thresholds``): verified
    auto-labelling; the samples tagged with its review tags export its reviewed field, the
    others the labels of ``gt_field`` (its pre-label field) that its class thresholds keep.

    Images missing on disk are skipped and counted. Raises :class:`CurationError` (before
    writing anything) for empty splits, samples in two splits, or existing output; with
    ``overwrite`` an existing split folder is replaced only if an export wrote all of it
    (labels.json marked EXPORT_MARK, data/ holding its images), else refused by name.

    Returns:
        {split: {"json_file", "image_root", "images", "annotations", "missing_images"}}
    """
    classes = list(classes or collection.default_classes or [])
    if not classes:
        raise CurationError(f"dataset {collection.name!r} has no default_classes; pass --classes.")
    if not collection.has_field(gt_field):
        raise CurationError(f"dataset {collection.name!r} has no label field {gt_field!r} "
                            f"(fields: {sorted(collection.get_field_schema())}).")
    if thresholds is not None:
        if thresholds["pred_field"] != gt_field:
            raise CurationError(f"--thresholds were calibrated on field "
                                f"{thresholds['pred_field']!r}, not {gt_field!r}; pass "
                                f"--gt-field {thresholds['pred_field']}.")
        if not collection.has_field(thresholds["gt_field"]):
            raise CurationError(f"dataset {collection.name!r} has no reviewed label field "
                                f"{thresholds['gt_field']!r} that --thresholds names.")
        uncalibrated = sorted(c for c in classes if c not in thresholds["thresholds"])
        if uncalibrated:
            logger.warning(f"classes {uncalibrated} have no calibrated threshold (no reviewed "
                           "example): their pre-labels are left out of the unreviewed samples.")
    views = _split_views(collection, splits, reject_tag)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise CurationError(f"--out {export_dir} is a file; name a folder to export into.")
    replaced = []
    for split in splits:
        split_dir = os.path.join(export_dir, split)
        if not os.path.lexists(split_dir):
            continue
        if not overwrite:
            raise CurationError(f"{split_dir} already exists; pass --overwrite to replace it.")
        foreign = _not_exported(split_dir)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                              if len(foreign) > 3 else "")
            raise CurationError(f"{split_dir} holds {len(foreign)} file(s) that no d2ext "
                                f"export wrote ({shown}); --overwrite replaces only an earlier "
                                "export: choose another --out.")
        replaced.append(split_dir)
    for split_dir in replaced:  # every folder checked before any is removed
        shutil.rmtree(split_dir)
    result = {}
    for split, view in views.items():
        result[split] = _export_split(view, os.path.join(export_dir, split), classes, gt_field,
                                      thresholds)
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
