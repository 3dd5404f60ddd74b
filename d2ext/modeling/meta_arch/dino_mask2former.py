"""Mask2Former-style universal segmentation on a DINO ViT (or any detectron2 backbone)."""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..criterion import build_set_criterion
from ..pixel_decoder import PIXEL_DECODER_REGISTRY
from ..transformer_decoder import TRANSFORMER_DECODER_REGISTRY
from ..postprocessing import MaskFormerInference


@META_ARCH_REGISTRY.register()
class DinoMask2Former(nn.Module):
    """Backbone (e.g. ``build_dino_sfp_backbone``: p2..p5) -> pixel decoder (1/4-resolution
    per-pixel embedding + multi-scale features) -> masked-attention transformer decoder (Q class
    and mask predictions) -> set criterion (training) or instance / semantic / panoptic outputs.

    Input: detectron2's list of dicts with "image" (C, H, W) in MODEL.INPUT.FORMAT, optional
    "height"/"width" (output size) and, for training, "instances" with ``gt_classes`` and
    ``gt_masks`` (``BitMasks`` or a (N, H, W) tensor). Images are padded to a multiple of
    ``size_divisibility`` only (never to a square).

    Output (inference): per image a dict with "instances", "sem_seg", "panoptic_seg" as enabled
    by MODEL.MASK_FORMER.TEST.*_ON. Training: the criterion's weighted losses.

    ``predict(images)``: normalised, padded (N, 3, H, W) -> the decoder's outputs (below); the
    parts can also be run one at a time (``extract_features``, ``decode_pixels``,
    ``decode_queries``, ``postprocess``) to time them separately.
    """

    @configurable
    def __init__(self, *, backbone, pixel_decoder, transformer_decoder, criterion, postprocessor,
                 pixel_mean, pixel_std, size_divisibility=32, deep_supervision=True):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.criterion = criterion
        self.postprocessor = postprocessor
        self.size_divisibility = size_divisibility
        self.deep_supervision = deep_supervision
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

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

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        """Normalise and pad to a multiple of ``size_divisibility`` -> ``ImageList``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

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

    def postprocess(self, outputs, batched_inputs, images):
        """Per image, the output dict at its original size (see ``MaskFormerInference``)."""
        results = []
        padded = tuple(images.tensor.shape[-2:])
        for logits, masks, x, size in zip(outputs["pred_logits"], outputs["pred_masks"],
                                          batched_inputs, images.image_sizes):
            out_size = (x.get("height", size[0]), x.get("width", size[1]))
            results.append(self.postprocessor(logits, masks, padded, size, out_size))
        return results

    def prepare_targets(self, batched_inputs, images):
        targets = []
        h_pad, w_pad = images.tensor.shape[-2:]
        for x in batched_inputs:
            if "instances" not in x:
                raise ValueError("DinoMask2Former in training mode needs 'instances' in every "
                                 "input (use d2ext's Mask2Former dataset mappers).")
            inst = x["instances"].to(self.device)
            if not inst.has("gt_masks") and len(inst):
                raise ValueError(
                    f"{type(self).__name__} trains on masks, but the instances of "
                    f"{x.get('file_name', 'an input')} have none: set MODEL.MASK_ON True "
                    "(detectron2's DatasetMapper drops masks without it) or use "
                    "INPUT.DATASET_MAPPER_NAME mask_former_instance_lsj.")
            masks = getattr(inst.gt_masks, "tensor", inst.gt_masks) if inst.has("gt_masks") \
                else torch.zeros((0,) + tuple(inst.image_size), device=self.device)
            padded = torch.zeros((len(masks), h_pad, w_pad), dtype=torch.float32,
                                 device=self.device)
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst.gt_classes, "masks": padded})
        return targets

    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        outputs = self.predict(images.tensor)
        if self.training:
            if not self.deep_supervision:
                outputs.pop("aux_outputs", None)
            return self.criterion(outputs, self.prepare_targets(batched_inputs, images))
        return self.postprocess(outputs, batched_inputs, images)
