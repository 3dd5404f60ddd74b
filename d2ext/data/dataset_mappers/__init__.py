"""Dataset mappers of the Mask2Former-style models, chosen by INPUT.DATASET_MAPPER_NAME."""
import copy
import logging

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..image_io import read_image_any
from .lsj_augmentation import ResizeShortestEdge
from .mask_former_instance_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_mapper import MaskFormerSemanticDatasetMapper

MAPPERS = {
    "mask_former_instance_lsj": MaskFormerInstanceDatasetMapper,
    "mask_former_semantic_lsj": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic_lsj": MaskFormerPanopticDatasetMapper,
}


class SkipUnreadableImages:
    """A training mapper that skips an image it cannot read (a missing, truncated or non-image
    file) with a warning naming it and a running count, instead of ending the run: it returns
    None, and detectron2's data loader then takes another image."""

    def __init__(self, mapper):
        self.mapper = mapper
        self.skipped = 0

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except OSError as err:  # PIL's unreadable and truncated images, missing files
            self.skipped += 1
            logging.getLogger(__name__).warning(
                f"skipped unreadable image {dataset_dict.get('file_name')} ({err}); "
                f"{self.skipped} skipped so far in this worker")
            return None


class AnyImageDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` reading its image with d2ext's reader
    (:func:`~d2ext.data.image_io.read_image_any`), so Mask R-CNN training and every head's
    evaluation see the pixels the Mask2Former-style mappers, the demo and ``predict`` see.

    ``__call__`` is overridden because ``DatasetMapper.__call__`` reads the image inline, with
    the module function ``detection_utils.read_image``, and offers no method to override for
    that; replacing the module function instead would change reading for every detectron2 user
    in the process, and for semantic labels too, which must not be rescaled. The override
    follows detectron2's steps with only the image read changed: labels are read as detectron2
    reads them, and annotations and proposals are handled by detectron2's own code
    (``_transform_annotations``, ``transform_proposals``).
    """

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_any(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, shape, transforms,
                                      proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, shape)
        return dataset_dict


def build_default_mapper(cfg, is_train):
    """detectron2's ``DatasetMapper`` with its configured augmentations, whose shortest-edge
    resize keeps every side of a very thin image at least one pixel, reading images with
    d2ext's reader (:class:`AnyImageDatasetMapper`)."""
    kwargs = DatasetMapper.from_config(cfg, is_train)
    kwargs["augmentations"] = [
        ResizeShortestEdge(a.short_edge_length, a.max_size, a.sample_style, a.interp)
        if type(a) is T.ResizeShortestEdge else a for a in kwargs["augmentations"]]
    return AnyImageDatasetMapper(**kwargs)


def build_train_mapper(cfg):
    """The training mapper named by INPUT.DATASET_MAPPER_NAME; for "", detectron2's
    ``DatasetMapper`` (``build_default_mapper``)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if not name:
        return build_default_mapper(cfg, is_train=True)
    if name not in MAPPERS:
        raise ValueError(f"INPUT.DATASET_MAPPER_NAME = {name!r} is unknown; use one of "
                         f"{sorted(MAPPERS)} or \"\" for detectron2's DatasetMapper.")
    return MAPPERS[name](cfg, is_train=True)
