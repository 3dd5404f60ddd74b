"""Large-scale-jitter augmentation shared by the Mask2Former-style mappers."""
from detectron2.data import transforms as T


def build_lsj_augmentation(cfg, is_train):
    """Training: random flip, resize so the image fits INPUT.IMAGE_SIZE x a random factor in
    [INPUT.MIN_SCALE, INPUT.MAX_SCALE], random crop to at most INPUT.IMAGE_SIZE square. Smaller
    images are not padded (the model pads a batch only to a multiple of 32).
    Testing: detectron2's shortest-edge resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    size = cfg.INPUT.IMAGE_SIZE
    augs = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    augs += [T.ResizeScale(min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE,
                           target_height=size, target_width=size),
             T.FixedSizeCrop(crop_size=(size, size), pad=False)]
    return augs
