"""The DINO ViT under detectron2's ViTDet simple feature pyramid: p2-p5 (+p6) for FPN heads."""
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

from .dino_vit import DinoViTBackbone


@BACKBONE_REGISTRY.register()
def build_dino_sfp_backbone(cfg, input_shape):
    """DinoViTBackbone + ``SimpleFeaturePyramid``.

    Outputs ``p2``..``p5`` at strides 4, 8, 16, 32 (scale factors MODEL.DINO.SFP_SCALE_FACTORS
    applied to the stride-16 ViT map) and ``p6`` at stride 64 (max pool, for the RPN), each with
    MODEL.FPN.OUT_CHANNELS channels. Inputs are padded to a multiple of 32 by detectron2.
    """
    vit = DinoViTBackbone(**DinoViTBackbone.from_config(cfg))
    return SimpleFeaturePyramid(
        net=vit,
        in_feature="vit",
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=tuple(cfg.MODEL.DINO.SFP_SCALE_FACTORS),
        top_block=LastLevelMaxPool(),
        norm=cfg.MODEL.FPN.NORM or "LN",
    )
