"""Config set-up shared by the tools: file + overrides, device, dataset registration."""
import logging
import os

import torch
from detectron2.data import MetadataCatalog

from ..config import config_value, default_device, get_d2ext_cfg
from ..data.datasets import DatasetError, register_datasets_from_cfg
from ..data.datasets.checks import check_dataset_names
from ..errors import UserError
from ..modeling.meta_arch import capabilities

logger = logging.getLogger(__name__)


def num_classes_key(cfg):
    """The config key that holds the number of classes of ``cfg``'s model (None for a model
    whose classes are not counted in the config: the zero-training ones)."""
    return capabilities(cfg).num_classes_key


def check_num_classes(cfg, dataset_names):
    """Stop when a dataset has more thing classes than the model's class count (the extra ones
    would be taught as "no object" or fail mid-training); warn when it has fewer. Datasets whose
    classes are not known yet (not loaded) are not checked."""
    caps = capabilities(cfg)
    key = caps.num_classes_key
    if key is None or caps.class_metadata != "thing_classes":
        return
    configured = config_value(cfg, key)
    for name in dataset_names:
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is None:
            continue
        if len(classes) > configured:
            raise UserError(f"dataset {name!r} has {len(classes)} classes but {key} is "
                             f"{configured}: set {key} {len(classes)}.")
        if len(classes) < configured:
            logger.warning(f"dataset {name!r} has {len(classes)} classes and {key} is "
                           f"{configured}: the model keeps {configured - len(classes)} unused.")


def check_stuff_classes(cfg):
    """A semantic model predicts exactly the classes of its datasets: stop when the
    registered train or test datasets name another number of classes."""
    caps = capabilities(cfg)
    if caps.num_classes_key is None or caps.class_metadata != "stuff_classes":
        return
    key = caps.num_classes_key
    configured = config_value(cfg, key)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        named = getattr(MetadataCatalog.get(name), "stuff_classes", None)
        if named is not None and len(named) != configured:
            raise DatasetError(
                f"dataset {name!r} has {len(named)} classes but {key} is {configured}; make "
                "them agree (DATASETS.SEM_SEG_CLASSES names the classes of DATASETS.SEM_SEG "
                "datasets).")


def merge_overrides(cfg, opts):
    """``cfg.merge_from_list(opts)`` with yacs' errors as one line naming the key: an odd
    number of words, a key that does not exist, a value of the wrong type."""
    opts = list(opts)
    if len(opts) % 2:
        raise UserError(f"config overrides {' '.join(map(str, opts))}: give KEY VALUE pairs (an "
                        "odd number of words was given; options such as --resume go before "
                        "the overrides or after them, not between a key and its value).")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, AssertionError, ValueError) as err:
            message = (str(err).strip().splitlines() or [""])[0].strip("'\"")
            raise UserError(f"config override {key} {value}: {message}") from None


def resolve_device(device):
    """MODEL.DEVICE "auto" -> ``default_device()`` ("cuda", else Apple "mps", else "cpu");
    a named device is checked for availability."""
    if device == "auto":
        return default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        # e.g. a config saved on a GPU machine (MODEL.DEVICE defaults to the best device there)
        logger.warning(f"MODEL.DEVICE={device!r}, but CUDA is not available here: using "
                       f"{default_device()!r}.")
        return default_device()
    return device


def setup_cfg(config_file="", opts=(), coco_datasets=(), sem_seg_datasets=(),
              coco_panoptic_datasets=()):
    """A d2ext config from ``config_file`` and ``opts`` (KEY VALUE ...), with MODEL.DEVICE
    resolved and the datasets it names registered. ``coco_datasets`` holds extra
    (name, json_file, image_root) triples, e.g. from ``--register-coco``; ``sem_seg_datasets``
    extra (name, image_dir, mask_dir) triples, e.g. from ``--register-sem-seg``;
    ``coco_panoptic_datasets`` extra (name, panoptic_json, panoptic_png_dir, image_dir)
    entries, e.g. from ``--register-coco-panoptic``."""
    cfg = get_d2ext_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise UserError(f"--config-file {config_file}: no such file; the repository's "
                            "configs are in configs/.")
        cfg.merge_from_file(config_file)
    merge_overrides(cfg, opts)
    cfg.DATASETS.COCO_INSTANCES = [list(e) for e in cfg.DATASETS.COCO_INSTANCES] + \
        [list(e) for e in coco_datasets]
    cfg.DATASETS.SEM_SEG = [list(e) for e in cfg.DATASETS.SEM_SEG] + \
        [list(e) for e in sem_seg_datasets]
    cfg.DATASETS.COCO_PANOPTIC = [list(e) for e in cfg.DATASETS.COCO_PANOPTIC] + \
        [list(e) for e in coco_panoptic_datasets]
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    capabilities(cfg)  # a meta-architecture that is not registered stops here, by name
    register_datasets_from_cfg(cfg)
    check_dataset_names(cfg)
    check_stuff_classes(cfg)
    return cfg
