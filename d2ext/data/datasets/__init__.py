from detectron2.data import MetadataCatalog

from .coco_instances import DatasetError, load_coco_instances, register_coco_dataset
from .synthetic_shapes import SYNTHETIC_CLASSES, register_synthetic_shapes
# Semantic segmentation datasets.
from .sem_seg_folders import load_sem_seg_folders, register_sem_seg_dataset
from .synthetic_sem_seg import register_synthetic_sem_seg


def test_thing_classes(cfg):
    """The class names of the first test dataset ([] without one): zero-training models number
    their classes as it does, so COCOEvaluator maps their predictions to its categories."""
    names = list(cfg.DATASETS.TEST)[:1]
    return list(getattr(MetadataCatalog.get(names[0]), "thing_classes", [])) if names else []


def _triples(entries, key, fields):
    """The entries of DATASETS.<key>, each checked to be [name, <fields>]."""
    for entry in entries:
        if len(entry) != 3:
            raise DatasetError(f"DATASETS.{key} entry {entry!r}: expected [name, {fields}].")
        yield entry


def register_datasets_from_cfg(cfg):
    """Register what the config names: DATASETS.COCO_INSTANCES and the synthetic dataset."""
    syn = cfg.DATASETS.SYNTHETIC
    register_synthetic_shapes(syn.ROOT or None, syn.NUM_TRAIN, syn.NUM_VAL, syn.IMAGE_SIZE)
    for entry in _triples(cfg.DATASETS.COCO_INSTANCES, "COCO_INSTANCES", "json_file, image_root"):
        register_coco_dataset(*entry)
    _register_sem_seg_from_cfg(cfg)


def _register_sem_seg_from_cfg(cfg):
    """DATASETS.SEM_SEG [name, image_dir, mask_dir] entries with DATASETS.SEM_SEG_CLASSES."""
    head = cfg.MODEL.SEM_SEG_HEAD
    classes = list(cfg.DATASETS.SEM_SEG_CLASSES) or \
        [f"class_{i}" for i in range(head.NUM_CLASSES)]
    register_synthetic_sem_seg(head.IGNORE_VALUE)
    for entry in _triples(cfg.DATASETS.SEM_SEG, "SEM_SEG", "image_dir, mask_dir"):
        register_sem_seg_dataset(*entry, classes=classes, ignore_value=head.IGNORE_VALUE)
    if cfg.MODEL.META_ARCHITECTURE not in ("SemanticSegmentor", "DinoSemanticSegmentor"):
        return
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        named = getattr(MetadataCatalog.get(name), "stuff_classes", None)
        if named is not None and len(named) != head.NUM_CLASSES:
            raise DatasetError(
                f"dataset {name!r} has {len(named)} classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"is {head.NUM_CLASSES}; make them agree (DATASETS.SEM_SEG_CLASSES names the "
                "classes of DATASETS.SEM_SEG datasets).")


register_synthetic_shapes()  # default sizes, so the names exist as soon as d2ext is imported
register_synthetic_sem_seg()
