"""DINOv3's ConvNeXt backbones (transformers' ``DINOv3ConvNextModel``) as detectron2 backbones:
the four stages at strides 4-32 (``res2``..``res5``), and an FPN on them for R-CNN heads."""
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

# The table lives in archs so that the weight loader can read it without importing this module
# (which imports the loader); older imports of these names from here still work.
from .archs import DINO_CONVNEXT_ARCHS, ConvNextArch
from .dino_weights import load_dino_weights

STAGES = ("res2", "res3", "res4", "res5")
STRIDES = (4, 8, 16, 32)


def build_hf_convnext(arch: ConvNextArch, drop_path_rate=0.0):
    # lazy: import d2ext stays light
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    return DINOv3ConvNextModel(DINOv3ConvNextConfig(
        hidden_sizes=list(arch.widths), depths=list(arch.depths), drop_path_rate=drop_path_rate))


class DinoConvNextBackbone(Backbone):
    """A DINOv3 ConvNeXt as a detectron2 backbone.

    Input: (N, 3, H, W) normalised images, any H and W (zero-padded to a multiple of 32 here, so
    every stride is exact; ``size_divisibility`` asks detectron2 for the same). Output: the
    stages named ``out_features`` of ``res2``..``res5`` (strides 4, 8, 16, 32); ``res5`` gets the
    model's final LayerNorm, the others are the raw stage outputs, as Meta's
    ``ConvNeXt.get_intermediate_layers(n=4, norm=True)`` returns them for dense tasks.

    ``freeze_blocks`` (MODEL.DINO.FREEZE_BLOCKS, named as for the ViT) counts stages here, each
    with its downsampling layer: 0 trains everything, N > 0 freezes the first N stages, -1 every
    stage (the final LayerNorm stays trainable).
    """

    def __init__(self, arch="dinov3_convnext_tiny", weights="", out_features=STAGES,
                 freeze_blocks=0, drop_path_rate=0.0):
        super().__init__()
        if arch not in DINO_CONVNEXT_ARCHS:
            raise ValueError(f"MODEL.DINO.ARCH: {arch!r} is not a ConvNeXt; the ConvNeXt "
                             f"backbones take one of {sorted(DINO_CONVNEXT_ARCHS)}")
        unknown = [f for f in out_features if f not in STAGES]
        if unknown or not out_features:
            raise ValueError(f"MODEL.DINO.CONVNEXT_OUT_FEATURES={list(out_features)}: choose "
                             f"from {list(STAGES)}")
        self.arch = DINO_CONVNEXT_ARCHS[arch]
        self.convnext = build_hf_convnext(self.arch, drop_path_rate)
        if weights:
            load_dino_weights(self.convnext, weights, arch_name=arch)
        stages = self.convnext.model.stages
        for stage in list(stages)[:freeze_blocks] if freeze_blocks >= 0 else stages:
            for p in stage.parameters():
                p.requires_grad_(False)
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(STAGES, self.arch.widths))
        self._out_feature_strides = dict(zip(STAGES, STRIDES))

    @property
    def size_divisibility(self):
        return STRIDES[-1]

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % STRIDES[-1], 0, -h % STRIDES[-1]))
        hidden = self.convnext.model(x, output_hidden_states=True).hidden_states[1:]
        out = dict(zip(STAGES, hidden))
        if "res5" in self._out_features:
            out["res5"] = self.convnext.layer_norm(out["res5"].permute(0, 2, 3, 1)).permute(
                0, 3, 1, 2)
        return {name: out[name] for name in self._out_features}

    def output_shape(self):
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name])
                for name in self._out_features}

    @classmethod
    def from_config(cls, cfg, out_features=None):
        d = cfg.MODEL.DINO
        return dict(arch=d.ARCH, weights=d.WEIGHTS,
                    out_features=tuple(out_features or d.CONVNEXT_OUT_FEATURES),
                    freeze_blocks=d.FREEZE_BLOCKS, drop_path_rate=d.DROP_PATH_RATE)


@BACKBONE_REGISTRY.register()
def build_dino_convnext_backbone(cfg, input_shape):
    """The DINOv3 ConvNeXt's stages (MODEL.DINO.CONVNEXT_OUT_FEATURES of res2..res5), for heads
    that take a multi-scale backbone directly (the Mask2Former-style pixel decoder)."""
    return DinoConvNextBackbone(**DinoConvNextBackbone.from_config(cfg))


@BACKBONE_REGISTRY.register()
def build_dino_convnext_fpn_backbone(cfg, input_shape):
    """detectron2's FPN on the ConvNeXt's res2..res5: p2..p5 and p6 (max pool, for the RPN),
    MODEL.FPN.OUT_CHANNELS wide, as ``build_resnet_fpn_backbone`` builds it for a ResNet."""
    bottom_up = DinoConvNextBackbone(**DinoConvNextBackbone.from_config(cfg, STAGES))
    return FPN(bottom_up=bottom_up, in_features=list(STAGES),
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
