"""COCO-style instance annotations -> Mask2Former-style training inputs."""
import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks

from ..image_io import read_image_any
from .lsj_augmentation import build_lsj_augmentation


class MaskFormerInstanceDatasetMapper:
    """Dataset dict (detectron2's COCO format: "file_name", "annotations" with "segmentation"
    as polygons or RLE) -> {"image": (3, H, W) uint8 tensor in INPUT.FORMAT, "instances":
    Instances(gt_classes (N,), gt_masks BitMasks (N, H, W), gt_boxes)} plus the original keys.

    Crowd regions are dropped (Mask2Former does not learn from them); instances that the crop
    or resize left empty (no mask pixel, or a degenerate box) are removed; images without any
    instance still train the "no object" class. Training crops are padded to INPUT.IMAGE_SIZE
    with INPUT.LSJ_PAD (``build_lsj_augmentation``), their masks with 0.
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train=True):
        # RLE masks are padded through the transforms as images: with 0, outside the object.
        return {"is_train": is_train,
                "augmentations": build_lsj_augmentation(cfg, is_train, seg_pad_value=0),
                "image_format": cfg.INPUT.FORMAT}

    def augmented_image(self, dataset_dict):
        """Read the image of ``dataset_dict``, augment it and store it as its "image" tensor;
        returns (the transforms, the original (H, W), the augmented (H, W))."""
        image = read_image_any(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        original_shape = image.shape[:2]
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return transforms, original_shape, image.shape[:2]

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        transforms, _, shape = self.augmented_image(dataset_dict)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        annos = [utils.transform_instance_annotations(a, transforms, shape)
                 for a in dataset_dict.pop("annotations", []) if not a.get("iscrowd", 0)]
        for a in annos:
            a.pop("keypoints", None)
        instances = utils.annotations_to_instances(annos, shape, mask_format="bitmask")
        if not instances.has("gt_masks"):  # no annotation at all
            instances.gt_masks = BitMasks(torch.zeros((0,) + shape, dtype=torch.bool))
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict
