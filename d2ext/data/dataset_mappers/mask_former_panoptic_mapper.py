"""COCO panoptic annotations (json + PNG segments) -> Mask2Former-style training inputs."""
import copy

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, Instances

from ..datasets.coco_instances import DatasetError
from .mask_former_instance_mapper import MaskFormerInstanceDatasetMapper


def rgb_to_segment_ids(rgb):
    """COCO panoptic PNG colours (H, W, 3) -> segment ids (H, W) int64: R + 256 G + 256^2 B
    (panopticapi's ``rgb2id``; panopticapi is needed only for the PQ evaluation)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class MaskFormerPanopticDatasetMapper(MaskFormerInstanceDatasetMapper):
    """Dataset dict in detectron2's COCO panoptic format ("file_name", "pan_seg_file_name", the
    RGB-encoded segment PNG, and "segments_info" [{"id", "category_id" (contiguous), "iscrowd",
    "isthing"}], as ``register_coco_panoptic`` loads them) -> {"image": (3, H, W) uint8 tensor in
    INPUT.FORMAT, "instances": Instances(gt_classes (N,), gt_masks BitMasks (N, H, W))}: one
    target per non-crowd segment, things and stuff alike, plus the original keys.

    Mask2Former's ``COCOPanopticNewBaselineDatasetMapper``: the segment PNG takes the image's
    large-scale jitter as a segmentation (nearest), then its colours become segment ids; crowd
    segments are not targets. Padding (INPUT.LSJ_PAD) is void: d2ext pads the PNG with id 0,
    Mask2Former with white (an id no segment has), which trains the same. Deliberate
    deviation: a segment that the crop removed entirely is dropped (Mask2Former keeps it as a
    target with an empty mask, which a query is then matched and taught to predict), as d2ext's
    instance mapper drops instances the crop removed. Its configuration is the instance
    mapper's: the segment PNG is padded as its masks are, with 0 (COCO panoptic's void id).
    """

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        if self.is_train and "pan_seg_file_name" not in dataset_dict:
            raise DatasetError(f"{dataset_dict['file_name']}: no 'pan_seg_file_name'; "
                             "MaskFormerPanopticDatasetMapper needs COCO panoptic labels.")
        transforms, original_shape, shape = self.augmented_image(dataset_dict)
        if not self.is_train:
            return dataset_dict
        # A label image: read as detectron2 reads labels (never rescaled).
        rgb = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")
        if rgb.shape[:2] != original_shape:
            raise DatasetError(f"{dataset_dict['file_name']}: its panoptic PNG is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}, the image "
                             f"{original_shape[1]}x{original_shape[0]}; they must be equal.")
        ids = rgb_to_segment_ids(transforms.apply_segmentation(rgb))
        classes, masks = [], []
        for segment in dataset_dict["segments_info"]:
            if segment.get("iscrowd", 0):
                continue
            mask = ids == segment["id"]
            if mask.any():
                classes.append(int(segment["category_id"]))
                masks.append(mask)
        instances = Instances(shape)
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_masks = BitMasks(torch.from_numpy(np.stack(masks)) if masks else
                                      torch.zeros((0,) + shape, dtype=torch.bool))
        dataset_dict["instances"] = instances
        return dataset_dict
