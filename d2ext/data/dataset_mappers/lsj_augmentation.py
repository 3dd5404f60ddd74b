"""Large-scale-jitter augmentation shared by the Mask2Former-style mappers, and resizes that
keep every side at least one pixel."""
from detectron2.data import transforms as T


def _at_least_one_pixel(transform):
    # detectron2 rounds each side on its own: a 1 x 4000 image fitted into 1333 pixels would be
    # 0 pixels high, which no resize accepts.
    if isinstance(transform, T.ResizeTransform):
        transform.new_h, transform.new_w = max(1, transform.new_h), max(1, transform.new_w)
    return transform


class ResizeShortestEdge(T.ResizeShortestEdge):
    """detectron2's ResizeShortestEdge; no side of the result is 0 pixels."""

    def get_transform(self, image):
        return _at_least_one_pixel(super().get_transform(image))


class ResizeScale(T.ResizeScale):
    """detectron2's ResizeScale (large-scale jitter); no side of the result is 0 pixels."""

    def get_transform(self, image):
        return _at_least_one_pixel(super().get_transform(image))


def build_lsj_augmentation(cfg, is_train, seg_pad_value=None):
    """Training: random flip, resize so the image fits INPUT.IMAGE_SIZE x a random factor in
    [INPUT.MIN_SCALE, INPUT.MAX_SCALE], random crop to at most INPUT.IMAGE_SIZE square; with
    INPUT.LSJ_PAD (the default, as Mask2Former's ``FixedSizeCrop`` and EoMT do) a smaller crop
    is padded at its bottom/right to the IMAGE_SIZE square with INPUT.LSJ_PAD_VALUE, and its
    label map / masks with ``seg_pad_value`` (None: MODEL.SEM_SEG_HEAD.IGNORE_VALUE, ignored by
    the loss; an instance mapper passes 0, not the object). Without it each crop keeps its size
    (the model pads a batch only to its size multiple).
    Testing: detectron2's shortest-edge resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)."""
    if not is_train:
        return [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    size = cfg.INPUT.IMAGE_SIZE
    if seg_pad_value is None:
        seg_pad_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    augs = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    augs += [ResizeScale(min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE,
                           target_height=size, target_width=size),
             T.FixedSizeCrop(crop_size=(size, size), pad=cfg.INPUT.LSJ_PAD,
                             pad_value=cfg.INPUT.LSJ_PAD_VALUE, seg_pad_value=seg_pad_value)]
    return augs
