from .coco_instances import DatasetError, load_coco_instances, register_coco_dataset
from .synthetic_shapes import SYNTHETIC_CLASSES, register_synthetic_shapes


def register_datasets_from_cfg(cfg):
    """Register what the config names: DATASETS.COCO_INSTANCES and the synthetic dataset."""
    syn = cfg.DATASETS.SYNTHETIC
    register_synthetic_shapes(syn.ROOT or None, syn.NUM_TRAIN, syn.NUM_VAL, syn.IMAGE_SIZE)
    for entry in cfg.DATASETS.COCO_INSTANCES:
        if len(entry) != 3:
            raise DatasetError(f"DATASETS.COCO_INSTANCES entry {entry!r}: expected "
                               "[name, json_file, image_root].")
        register_coco_dataset(*entry)


register_synthetic_shapes()  # default sizes, so the names exist as soon as d2ext is imported
