"""Dataset mappers of the Mask2Former-style models, chosen by INPUT.DATASET_MAPPER_NAME."""
from .mask_former_instance_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_semantic_mapper import MaskFormerSemanticDatasetMapper

MAPPERS = {
    "mask_former_instance_lsj": MaskFormerInstanceDatasetMapper,
    "mask_former_semantic_lsj": MaskFormerSemanticDatasetMapper,
}


def build_train_mapper(cfg):
    """The training mapper named by INPUT.DATASET_MAPPER_NAME; None for "" (detectron2's
    default ``DatasetMapper``)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if not name:
        return None
    if name not in MAPPERS:
        raise ValueError(f"INPUT.DATASET_MAPPER_NAME = {name!r} is unknown; use one of "
                         f"{sorted(MAPPERS)} or \"\" for detectron2's DatasetMapper.")
    return MAPPERS[name](cfg, is_train=True)
