from detectron2.data import MetadataCatalog

from .coco_instances import (
    DatasetError,
    coco_class_metadata,
    load_coco_instances,
    read_categories,
    register_coco_dataset,
)
from .coco_panoptic import (
    load_coco_panoptic,
    panoptic_class_metadata,
    register_coco_panoptic_dataset,
)

# Semantic segmentation datasets.
from .sem_seg_folders import load_sem_seg_folders, register_sem_seg_dataset
from .synthetic_panoptic import register_synthetic_panoptic
from .synthetic_sem_seg import register_synthetic_sem_seg
from .synthetic_shapes import SYNTHETIC_CLASSES, register_synthetic_shapes

__all__ = ["DatasetError", "SYNTHETIC_CLASSES", "coco_class_metadata", "evaluation_thing_classes",
           "load_coco_instances", "load_coco_panoptic", "load_sem_seg_folders",
           "panoptic_class_metadata", "read_categories", "register_coco_dataset",
           "register_coco_panoptic_dataset", "register_datasets_from_cfg",
           "register_sem_seg_dataset", "register_synthetic_panoptic",
           "register_synthetic_sem_seg", "register_synthetic_shapes"]


def evaluation_thing_classes(cfg):
    """The class names of the first test dataset ([] without one, or when they are unknown
    before it is loaded): zero-training models number their classes as it does, so that
    COCOEvaluator maps their predictions to its categories.

    d2ext registers COCO jsons with their classes; a COCO dataset registered otherwise
    (detectron2's ``register_coco_instances`` sets them only when it loads) is named by the
    "categories" of its metadata's json_file, in the order ``load_coco_json`` gives them."""
    names = list(cfg.DATASETS.TEST)[:1]
    if not names:
        return []
    meta = MetadataCatalog.get(names[0])
    classes = getattr(meta, "thing_classes", None)
    if classes is None and getattr(meta, "json_file", None):
        classes = coco_class_metadata(read_categories(meta.json_file) or []).get("thing_classes")
    return list(classes or [])


def _entries(entries, key, fields):
    """The entries of DATASETS.<key>, each checked to be [name, <fields>] (comma-separated)."""
    for entry in entries:
        if len(entry) != 2 + fields.count(","):
            raise DatasetError(f"DATASETS.{key} entry {entry!r}: expected [name, {fields}].")
        yield entry


def register_datasets_from_cfg(cfg):
    """Register what the config names: DATASETS.COCO_INSTANCES, DATASETS.COCO_PANOPTIC, the
    semantic folders and the synthetic datasets."""
    syn = cfg.DATASETS.SYNTHETIC
    register_synthetic_shapes(syn.ROOT or None, syn.NUM_TRAIN, syn.NUM_VAL, syn.IMAGE_SIZE)
    register_synthetic_panoptic(syn.ROOT or None, syn.NUM_TRAIN, syn.NUM_VAL, syn.IMAGE_SIZE)
    for entry in _entries(cfg.DATASETS.COCO_INSTANCES, "COCO_INSTANCES", "json_file, image_root"):
        register_coco_dataset(*entry)
    for entry in _entries(cfg.DATASETS.COCO_PANOPTIC, "COCO_PANOPTIC",
                          "panoptic_json, panoptic_png_dir, image_dir"):
        register_coco_panoptic_dataset(*entry)
    _register_sem_seg_from_cfg(cfg)


def _register_sem_seg_from_cfg(cfg):
    """DATASETS.SEM_SEG [name, image_dir, mask_dir] entries with DATASETS.SEM_SEG_CLASSES."""
    head = cfg.MODEL.SEM_SEG_HEAD
    classes = list(cfg.DATASETS.SEM_SEG_CLASSES) or \
        [f"class_{i}" for i in range(head.NUM_CLASSES)]
    register_synthetic_sem_seg(head.IGNORE_VALUE)
    for entry in _entries(cfg.DATASETS.SEM_SEG, "SEM_SEG", "image_dir, mask_dir"):
        register_sem_seg_dataset(*entry, classes=classes, ignore_value=head.IGNORE_VALUE)


register_synthetic_shapes()  # default sizes, so the names exist as soon as d2ext is imported
register_synthetic_sem_seg()
register_synthetic_panoptic()
