"""Semantic segmentation data -> Mask2Former-style training inputs (one mask per class)."""
import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from ..image_io import read_image_any
from .lsj_augmentation import build_lsj_augmentation


class MaskFormerSemanticDatasetMapper:
    """Dataset dict with "file_name" and "sem_seg_file_name" (a label PNG, values = contiguous
    class ids, ``ignore_label`` = void) -> {"image": (3, H, W) uint8 tensor, "sem_seg": (H, W)
    int64, "instances": Instances(gt_classes (N,), gt_masks BitMasks (N, H, W))}: one target
    per class present after augmentation, so the set criterion trains on semantic data too.
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ignore_label=255):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {"is_train": is_train, "augmentations": build_lsj_augmentation(cfg, is_train),
                "image_format": cfg.INPUT.FORMAT,
                "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE}

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_any(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(f"{dataset_dict['file_name']}: no 'sem_seg_file_name'; "
                             "MaskFormerSemanticDatasetMapper needs semantic labels.")
        # Class ids, not an image: detectron2's reader keeps 16-bit ids as they are, where the
        # image reader would rescale them. float64: resizing works on it (not on int64); labels
        # stay exact under nearest.
        sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        if sem_seg.ndim == 3:
            sem_seg = sem_seg[..., 0]
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("int64"))
        if not self.is_train:
            return dataset_dict
        classes = [int(c) for c in np.unique(sem_seg) if c != self.ignore_label]
        instances = Instances(image.shape[:2])
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        masks = [sem_seg == c for c in classes]
        instances.gt_masks = BitMasks(torch.from_numpy(np.stack(masks)) if masks else
                                      torch.zeros((0,) + image.shape[:2], dtype=torch.bool))
        dataset_dict["instances"] = instances
        return dataset_dict
