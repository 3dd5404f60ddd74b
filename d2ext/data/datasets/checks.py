"""Checks of the datasets a config names, made before any model or weights are loaded, so that
a typo or missing data is reported in seconds, by name, with the fix."""
import difflib
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_instances import DatasetError

# Metadata fields of detectron2's registrations that name files or folders the loader reads.
_DATA_PATHS = ("json_file", "image_root", "sem_seg_root", "panoptic_json", "panoptic_root")


def check_dataset_names(cfg):
    """Every name in DATASETS.TRAIN / DATASETS.TEST is registered; otherwise one line with the
    closest registered name and how to register one's own data."""
    registered = DatasetCatalog.list()
    for key in ("TRAIN", "TEST"):
        for name in getattr(cfg.DATASETS, key):
            if name in registered:
                continue
            close = difflib.get_close_matches(name, registered, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DatasetError(f"DATASETS.{key} names {name!r}, which is not registered; {hint}"
                               "register your own data with --register-coco NAME JSON "
                               "IMAGE_ROOT (or DATASETS.COCO_INSTANCES) and use that NAME.")


def check_dataset_files(names):
    """The files and folders the registered datasets ``names`` read exist; otherwise one line
    naming the dataset, the path and where detectron2 looks for its built-in datasets."""
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    for name in names:
        meta = MetadataCatalog.get(name)
        if getattr(meta, "generated_on_load", False):  # d2ext's synthetic data
            continue
        for field in _DATA_PATHS:
            path = getattr(meta, field, None)
            if path and not os.path.exists(path):
                raise DatasetError(
                    f"dataset {name!r} reads {path} ({field}), which does not exist: put the "
                    f"data there (detectron2's built-in datasets live under $DETECTRON2_DATASETS,"
                    f" now {os.path.abspath(root)}), or register your own data with "
                    "--register-coco NAME JSON IMAGE_ROOT and name it in DATASETS.TRAIN / "
                    "DATASETS.TEST.")
