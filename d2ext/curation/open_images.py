"""Load an Open Images V7 subset with instance masks into a persistent FiftyOne dataset.

Online it comes from the FiftyOne zoo (``open-images-v7``); offline from a local directory in the
layout FiftyOne's ``OpenImagesV7DatasetImporter`` reads::

    DIR/data/<ImageID>.jpg
    DIR/metadata/classes.csv                 # "/m/03k3r,Panda" lines, no header
    DIR/metadata/segmentation_classes.csv    # one "/m/..." label id per line
    DIR/labels/segmentations.csv             # MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,
                                             #   BoxYMin,BoxYMax,PredictedIoU,Clicks
    DIR/labels/masks/<first char of ImageID, upper case>/<MaskPath>.png
"""
import csv
import difflib
import logging
import os

from .fiftyone_db import CurationError, require_fiftyone

logger = logging.getLogger(__name__)

DEFAULT_CLASSES = ("Panda", "Dice", "Duck")
GT_FIELD = "ground_truth"  # the field FiftyOne's Open Images importer fills (one label type)


def check_class_names(classes, valid_names, source):
    """Raise :class:`CurationError` for names not in ``valid_names``, listing the closest."""
    if not classes:
        raise CurationError("no class names given; pass e.g. --classes Panda Dice Duck.")
    problems = []
    for name in classes:
        if name not in valid_names:
            close = difflib.get_close_matches(name, valid_names, n=5, cutoff=0.5)
            problems.append(f"  {name!r}: closest valid names: {', '.join(close) or 'none'}")
    if problems:
        raise CurationError(f"unknown Open Images segmentation class name(s) in {source} "
                            "(names are case-sensitive):\n" + "\n".join(problems))


def _read_csv_rows(path, what):
    if not os.path.isfile(path):
        raise CurationError(f"{path} is missing: the Open Images V7 directory needs {what} "
                            "(see the layout in d2ext/curation/open_images.py).")
    with open(path, newline="", encoding="utf8") as f:
        return [row for row in csv.reader(f) if row]


def local_segmentation_classes(source_dir):
    """{class name: Open Images label id} of the classes with masks in a local V7 directory."""
    meta = os.path.join(source_dir, "metadata")
    id_to_name = dict(r[:2] for r in _read_csv_rows(os.path.join(meta, "classes.csv"),
                                                    "class descriptions") if len(r) >= 2)
    seg_ids = [r[0].strip() for r in _read_csv_rows(
        os.path.join(meta, "segmentation_classes.csv"), "the list of segmentation classes")]
    return {id_to_name[i]: i for i in seg_ids if i in id_to_name}


def count_missing_images(source_dir, label_ids):
    """Images annotated with ``label_ids`` in labels/segmentations.csv but absent from data/."""
    csv_path = os.path.join(source_dir, "labels", "segmentations.csv")
    rows = _read_csv_rows(csv_path, "segmentation labels")
    header = rows[0]
    try:
        image_col, label_col = header.index("ImageID"), header.index("LabelName")
    except ValueError:
        raise CurationError(f"{csv_path}: header {header} lacks ImageID / LabelName columns.")
    wanted = {r[image_col] for r in rows[1:] if r[label_col] in set(label_ids)}
    data_dir = os.path.join(source_dir, "data")
    present = {os.path.splitext(f)[0] for f in os.listdir(data_dir)} \
        if os.path.isdir(data_dir) else set()
    return len(wanted - present)


def load_open_images(name, classes=DEFAULT_CLASSES, source_dir=None, split="validation",
                     max_samples=None, seed=51, overwrite=False):
    """Create the persistent FiftyOne dataset ``name`` with the Open Images V7 images that hold
    masks of ``classes`` (only those classes' masks are kept, in field ``ground_truth``).

    Returns:
        (dataset, stats): stats = {"samples": N, "missing_images": M} where M counts images the
        labels mention but ``source_dir/data`` lacks (skipped); M is None for the zoo.
    """
    fo = require_fiftyone()
    classes = list(classes)
    if fo.dataset_exists(name) and not overwrite:
        raise CurationError(f"FiftyOne dataset {name!r} already exists: continue curating it "
                            "(app / export commands), choose another --dataset, or pass "
                            "--overwrite to reload it.")
    common = dict(label_types=["segmentations"], classes=classes, only_matching=True,
                  max_samples=max_samples, shuffle=seed is not None, seed=seed)
    if source_dir:
        if not os.path.isdir(source_dir):
            raise CurationError(f"Open Images directory {source_dir} does not exist.")
        valid = local_segmentation_classes(source_dir)
        check_class_names(classes, sorted(valid), f"{source_dir}/metadata")
        missing = count_missing_images(source_dir, [valid[c] for c in classes])
        if missing:
            logger.warning(f"{missing} image(s) with {classes} masks are listed in "
                           f"{source_dir}/labels/segmentations.csv but missing from "
                           f"{source_dir}/data: skipped.")
        dataset = fo.Dataset.from_dir(
            dataset_dir=source_dir, dataset_type=fo.types.OpenImagesV7Dataset, name=name,
            overwrite=overwrite, load_hierarchy=False, **common)
    else:
        import fiftyone.utils.openimages as fouo
        import fiftyone.zoo as foz

        missing = None
        try:
            check_class_names(classes, fouo.get_segmentation_classes(version="v7"),
                              "the Open Images V7 segmentation classes")
            dataset = foz.load_zoo_dataset("open-images-v7", split=split, dataset_name=name,
                                           drop_existing_dataset=overwrite, **common)
        except OSError as err:  # requests' ConnectionError is an OSError too
            raise CurationError(f"cannot download Open Images V7 from the FiftyOne zoo "
                                f"({type(err).__name__}: {err}). Offline, load a local copy "
                                "with --source-dir DIR.") from err
    if len(dataset) == 0:
        dataset.delete()
        raise CurationError(f"no images with masks of {classes} found "
                            f"({source_dir or 'open-images-v7 ' + split}); nothing loaded.")
    dataset.persistent = True  # tags set in the App survive; export resumes from them later
    dataset.default_classes = classes  # the class order of the export and of the model
    dataset.save()
    return dataset, {"samples": len(dataset), "missing_images": missing}
