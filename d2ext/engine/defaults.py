"""Config set-up shared by the tools: file + overrides, device, dataset registration."""
import logging

import torch
from detectron2.modeling import META_ARCH_REGISTRY

from ..config import default_device, get_d2ext_cfg
from ..data.datasets import register_datasets_from_cfg

logger = logging.getLogger(__name__)


def num_classes_key(cfg):
    """The config key that holds the number of classes of ``cfg``'s model (None for a model that
    is not trained on classes, the SAM-prompt one)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "DinoSamPrompt":
        return None
    return "MODEL.ROI_HEADS.NUM_CLASSES" if arch == "GeneralizedRCNN" else \
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES"


def check_num_classes(cfg, dataset_names):
    """Stop when a dataset has more thing classes than the model's class count (the extra ones
    would be taught as "no object" or fail mid-training); warn when it has fewer. Datasets whose
    classes are not known yet (not loaded) are not checked."""
    from detectron2.data import MetadataCatalog

    key = num_classes_key(cfg)
    if key is None:
        return
    configured = cfg
    for part in key.split("."):
        configured = getattr(configured, part)
    for name in dataset_names:
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is None:
            continue
        if len(classes) > configured:
            raise ValueError(f"dataset {name!r} has {len(classes)} classes but {key} is "
                             f"{configured}: set {key} {len(classes)}.")
        if len(classes) < configured:
            logger.warning(f"dataset {name!r} has {len(classes)} classes and {key} is "
                           f"{configured}: the model keeps {configured - len(classes)} unused.")


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


def setup_cfg(config_file="", opts=(), coco_datasets=(), sem_seg_datasets=()):
    """A d2ext config from ``config_file`` and ``opts`` (KEY VALUE ...), with MODEL.DEVICE
    resolved and the datasets it names registered. ``coco_datasets`` holds extra
    (name, json_file, image_root) triples, e.g. from ``--register-coco``; ``sem_seg_datasets``
    extra (name, image_dir, mask_dir) triples, e.g. from ``--register-sem-seg``."""
    cfg = get_d2ext_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.DATASETS.COCO_INSTANCES = [list(e) for e in cfg.DATASETS.COCO_INSTANCES] + \
        [list(e) for e in coco_datasets]
    cfg.DATASETS.SEM_SEG = [list(e) for e in cfg.DATASETS.SEM_SEG] + \
        [list(e) for e in sem_seg_datasets]
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    if cfg.MODEL.META_ARCHITECTURE not in META_ARCH_REGISTRY:
        names = sorted(name for name, _ in META_ARCH_REGISTRY)
        raise ValueError(f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} is not "
                         f"registered; choose one of {names}.")
    register_datasets_from_cfg(cfg)
    return cfg
