"""A linear semantic segmentation head on (frozen) DINO features, for detectron2's
SemanticSegmentor: the recipe of DINOv2's linear evaluation (BatchNorm + 1x1 classifier over the
patch tokens of the last blocks, bilinear upsampling)."""
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn


@SEM_SEG_HEADS_REGISTRY.register()
class DinoLinearSemSegHead(nn.Module):
    """Norm + 1x1 conv over one feature map, logits upsampled bilinearly to the input size.

    Input: ``features[in_feature]`` of shape (N, C, H/s, W/s) with s = the feature's stride; for
    ``build_dino_vit_backbone`` that is "vit", stride 16, C = width x len(MODEL.DINO.OUT_BLOCKS)
    (the blocks' tokens concatenated, so the blocks are chosen by MODEL.DINO.OUT_BLOCKS).
    Output (inference): (N, num_classes, H, W) logits at the (padded) input resolution.
    Training: ``{"loss_sem_seg": cross entropy over pixels != ignore_value}``; targets are
    (N, H, W) class ids, padded by SemanticSegmentor with ignore_value.
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, in_feature: str, num_classes: int,
                 ignore_value: int = 255, norm: str = "BN", loss_weight: float = 1.0):
        super().__init__()
        if in_feature not in input_shape:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES: the backbone has no feature "
                             f"{in_feature!r} (it has {sorted(input_shape)}).")
        channels = input_shape[in_feature].channels
        self.in_feature = in_feature
        self.stride = input_shape[in_feature].stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value  # SemanticSegmentor pads targets with it
        self.loss_weight = loss_weight
        # Tokens of different blocks differ in scale: a norm puts them on one footing, so one
        # linear layer can weigh them (DINOv2's linear head does the same with BatchNorm).
        self.norm = get_norm(norm, channels) or nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        in_features = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
        if len(in_features) != 1:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)}: "
                             "DinoLinearSemSegHead reads one map; set it to ['vit'] and choose "
                             "the ViT blocks with MODEL.DINO.OUT_BLOCKS.")
        head = cfg.MODEL.SEM_SEG_HEAD
        return dict(input_shape=input_shape, in_feature=in_features[0],
                    num_classes=head.NUM_CLASSES, ignore_value=head.IGNORE_VALUE,
                    norm=head.NORM, loss_weight=head.LOSS_WEIGHT)

    def layers(self, features):
        """(N, C, h, w) features -> (N, num_classes, h, w) logits at the feature stride."""
        return self.classifier(self.norm(features[self.in_feature]))

    def forward(self, features, targets=None):
        logits = self.layers(features)
        if self.training:
            return None, {"loss_sem_seg": self.losses(logits, targets)}
        h, w = logits.shape[-2:]
        return upsample_bilinear(logits, (h * self.stride, w * self.stride)), {}

    def losses(self, logits, targets):
        # Upsample the logits, not downsample the labels: thin structures keep their pixels.
        logits = upsample_bilinear(logits.float(), targets.shape[-2:])
        bad = (targets != self.ignore_value) & ((targets < 0) | (targets >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"mask value {int(targets[bad][0])} is neither a class id in [0, "
                f"{self.num_classes}) nor MODEL.SEM_SEG_HEAD.IGNORE_VALUE={self.ignore_value}. "
                "Set MODEL.SEM_SEG_HEAD.NUM_CLASSES / IGNORE_VALUE to match the masks (e.g. "
                "masks saved as 0/255 need their 255 mapped to 1).")
        if not (targets != self.ignore_value).any():
            return logits.sum() * 0.0  # an all-ignored batch: no signal, and no NaN
        return self.loss_weight * F.cross_entropy(logits, targets, ignore_index=self.ignore_value)


def bilinear_matrix(size_in, size_out, device=None):
    """(size_out, size_in) float64 weights of 1-D bilinear resampling as ``F.interpolate(...,
    size=..., mode="bilinear", align_corners=False)`` does it (no antialiasing)."""
    src = (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) \
        * (size_in / size_out) - 0.5
    src = src.clamp(min=0)
    lo = src.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = src - lo
    rows = torch.arange(size_out, device=device)
    matrix = torch.zeros(size_out, size_in, device=device, dtype=torch.float64)
    matrix.index_put_((rows, lo), 1 - frac, accumulate=True)
    matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix


def upsample_bilinear(x, size):
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two matrix products
    (rows, then columns).

    The output (N, K, H, W) is large (K x H x W logits) and the input tiny (a 1/16 grid), so
    the cost is writing the output, which matrix products do in one pass on every device.
    """
    rows = bilinear_matrix(x.shape[-2], size[0], x.device).to(x.dtype)
    cols = bilinear_matrix(x.shape[-1], size[1], x.device).to(x.dtype)
    return rows @ x @ cols.T
