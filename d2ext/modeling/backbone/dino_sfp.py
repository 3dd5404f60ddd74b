"""The DINO ViT under detectron2's ViTDet simple feature pyramid: p2-p5 (+p6) for FPN heads."""
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

from .dino_vit import DinoViTBackbone


class DinoSimpleFeaturePyramid(SimpleFeaturePyramid):
    """detectron2's SimpleFeaturePyramid, asking for inputs padded to its coarsest pyramid
    stride (p5: 32). detectron2's class spells that constraint "size_divisiblity", which
    ``ImageList.from_tensors`` does not read, and reports ``size_divisibility`` 0, so the R-CNN
    models padded nothing beyond the ViT's 16: a one-token-wide map then has no 1/32 cell and
    the pyramid's max pool fails (a 20 x 1500 image at test size)."""

    @property
    def size_divisibility(self):
        return self._size_divisibility

    @property
    def padding_constraints(self):
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}


@BACKBONE_REGISTRY.register()
def build_dino_sfp_backbone(cfg, input_shape):
    """DinoViTBackbone + ``SimpleFeaturePyramid``.

    Outputs ``p2``..``p5`` at strides 4, 8, 16, 32 (scale factors MODEL.DINO.SFP_SCALE_FACTORS
    applied to the stride-16 ViT map) and ``p6`` at stride 64 (max pool, for the RPN), each with
    MODEL.FPN.OUT_CHANNELS channels. Inputs are padded to a multiple of 32.
    """
    vit = DinoViTBackbone(**DinoViTBackbone.from_config(cfg))
    return DinoSimpleFeaturePyramid(
        net=vit,
        in_feature="vit",
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=tuple(cfg.MODEL.DINO.SFP_SCALE_FACTORS),
        top_block=LastLevelMaxPool(),
        norm=cfg.MODEL.FPN.NORM or "LN",
    )
