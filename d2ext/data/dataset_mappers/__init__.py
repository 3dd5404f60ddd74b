"""Dataset mappers of the Mask2Former-style models, chosen by INPUT.DATASET_MAPPER_NAME."""
import logging

from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from .lsj_augmentation import ResizeShortestEdge
from .mask_former_instance_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_semantic_mapper import MaskFormerSemanticDatasetMapper

MAPPERS = {
    "mask_former_instance_lsj": MaskFormerInstanceDatasetMapper,
    "mask_former_semantic_lsj": MaskFormerSemanticDatasetMapper,
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


def build_default_mapper(cfg, is_train):
    """detectron2's ``DatasetMapper`` with its configured augmentations, whose shortest-edge
    resize keeps every side of a very thin image at least one pixel."""
    kwargs = DatasetMapper.from_config(cfg, is_train)
    kwargs["augmentations"] = [
        ResizeShortestEdge(a.short_edge_length, a.max_size, a.sample_style, a.interp)
        if type(a) is T.ResizeShortestEdge else a for a in kwargs["augmentations"]]
    return DatasetMapper(**kwargs)


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
