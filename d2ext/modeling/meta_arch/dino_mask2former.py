"""Mask2Former-style universal segmentation on a DINO ViT (or any detectron2 backbone)."""
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from ..criterion import build_set_criterion
from ..pixel_decoder import PIXEL_DECODER_REGISTRY
from ..postprocessing import MaskFormerInference
from ..transformer_decoder import TRANSFORMER_DECODER_REGISTRY
from .mask_classification import (
    MaskClassificationModel,
    mask_classification_benchmark,
    mask_classification_capabilities,
)

# Backbones built on the DINO ViT (the bare ViT, and the ViT with the simple feature pyramid).
DINO_VIT_BACKBONES = ("build_dino_vit_backbone", "build_dino_sfp_backbone")


def _fixed_size_reason(cfg, fmt):
    if fmt == "torch_export" and cfg.MODEL.BACKBONE.NAME in DINO_VIT_BACKBONES:
        return ("torch.export cannot load back the saved program of the Mask2Former-style head "
                "on a DINO ViT with a symbolic size (a split of the ViT's RoPE); --format onnx "
                "is dynamic")
    return None


def _benchmark_parts(model):
    modules = {}
    if hasattr(model.backbone, "net"):  # ViT + simple feature pyramid: split ViT and neck
        modules["backbone (ViT)"] = model.backbone.net
        modules["backbone + neck"] = model.backbone
    else:
        modules["backbone"] = model.backbone
    modules["pixel decoder"] = model.pixel_decoder
    modules["transformer decoder"] = model.transformer_decoder
    return modules, {"post-processing": "postprocess"}


@META_ARCH_REGISTRY.register()
class DinoMask2Former(MaskClassificationModel):
    """Backbone (e.g. ``build_dino_sfp_backbone``: p2..p5) -> pixel decoder (1/4-resolution
    per-pixel embedding + multi-scale features) -> masked-attention transformer decoder (Q class
    and mask predictions) -> set criterion (training) or instance / semantic / panoptic outputs.

    Inputs and outputs: ``MaskClassificationModel``'s; images are padded to a multiple of
    ``size_divisibility`` only (never to a square).

    ``predict(images)``: normalised, padded (N, 3, H, W) -> the decoder's outputs (below); the
    parts can also be run one at a time (``extract_features``, ``decode_pixels``,
    ``decode_queries``, ``postprocess``) to time them separately.
    """

    capabilities = mask_classification_capabilities(
        fixed_size_reason=_fixed_size_reason,
        benchmark=mask_classification_benchmark("hf_m2f", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
                                                _benchmark_parts))

    @configurable
    def __init__(self, *, backbone, pixel_decoder, transformer_decoder, criterion, postprocessor,
                 pixel_mean, pixel_std, size_divisibility=32, deep_supervision=True):
        super().__init__(criterion=criterion, postprocessor=postprocessor, pixel_mean=pixel_mean,
                         pixel_std=pixel_std, size_divisibility=size_divisibility)
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.deep_supervision = deep_supervision

    @classmethod
    def from_config(cls, cfg):
        mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in head.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, but the backbone "
                             f"{cfg.MODEL.BACKBONE.NAME} gives only {sorted(shapes)}.")
        try:
            pixel_decoder = PIXEL_DECODER_REGISTRY.get(head.PIXEL_DECODER_NAME)(cfg, shapes)
            transformer_decoder = TRANSFORMER_DECODER_REGISTRY.get(mf.TRANSFORMER_DECODER_NAME)(
                cfg, head.CONVS_DIM)
        except KeyError as err:
            raise KeyError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME / MODEL.MASK_FORMER."
                           f"TRANSFORMER_DECODER_NAME: {err}") from None
        return {
            "backbone": backbone, "pixel_decoder": pixel_decoder,
            "transformer_decoder": transformer_decoder, "criterion": build_set_criterion(cfg),
            "postprocessor": MaskFormerInference(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": mf.SIZE_DIVISIBILITY or backbone.size_divisibility,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }

    def extract_features(self, images):
        """(N, 3, H, W) -> the backbone's feature dict."""
        return self.backbone(images)

    def decode_pixels(self, features):
        """-> (mask_features (N, mask_dim, H/4, W/4), multi_scale_features coarsest first)."""
        return self.pixel_decoder(features)

    def decode_queries(self, multi_scale_features, mask_features):
        """-> {"pred_logits": (N, Q, K+1), "pred_masks": (N, Q, H/4, W/4)[, "aux_outputs"]}."""
        return self.transformer_decoder(multi_scale_features, mask_features)

    def predict(self, images):
        """Normalised, padded (N, 3, H, W) -> {"pred_logits": (N, Q, K+1), "pred_masks":
        (N, Q, H/4, W/4)[, "aux_outputs"]}: the whole network, without post-processing."""
        mask_features, multi_scale = self.decode_pixels(self.extract_features(images))
        return self.decode_queries(multi_scale, mask_features)

    def training_outputs(self, images):
        outputs = self.predict(images)
        if not self.deep_supervision:
            outputs.pop("aux_outputs", None)
        return outputs
