"""Mask2Former's pixel decoder: a deformable-attention encoder over the coarse scales, then an
FPN step to a 1/4-resolution per-pixel embedding."""
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from ..position_encoding import sine_position_embedding
from .ms_deform_attn import MSDeformAttn

# d2ext's own registry: Mask2Former registers its pixel decoders in detectron2's shared
# SEM_SEG_HEADS_REGISTRY, so a d2ext name there would clash when both packages are imported.
PIXEL_DECODER_REGISTRY = Registry("D2EXT_PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """Pixel decoders of Mask2Former-style models, named by
MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME and built with (cfg, input_shape)."""

# Mask2Former feeds its transformer decoder 3 scales whatever the encoder's level count.
NUM_DECODER_SCALES = 3


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: multi-scale deformable self-attention, then an MLP. (N, S, C) -> same.
    The MLP's ReLU is not in place: on the (N, S, C) view of a matrix product, an in-place one
    makes autograd copy the whole activation back through the view in the backward pass."""

    def __init__(self, dim, dim_feedforward, n_levels, n_heads, n_points, dropout=0.0):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(dim_feedforward, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes):
        src = self.norm1(src + self.dropout(
            self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        return self.norm2(src + self.dropout(self.ffn(src)))


def encoder_reference_points(spatial_shapes, batch, device, dtype):
    """Every pixel's centre in [0, 1] (x, y), the same for all levels: (B, S, L, 2), for
    ``spatial_shapes`` L pairs (H_l, W_l)."""
    points = []
    for h, w in spatial_shapes:
        ys, xs = torch.meshgrid((torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
                                (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
                                indexing="ij")
        points.append(torch.stack((xs.flatten(), ys.flatten()), -1))
    points = torch.cat(points)  # (S, 2)
    return points[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder over backbone features, e.g. the DINO simple feature pyramid p2..p5.

    Input: dict name -> (N, C_in, H/s, W/s) for ``input_shape``'s features. The coarse ones
    (``transformer_in_features``, e.g. p3..p5 at strides 8, 16, 32) are projected to ``conv_dim``
    and refined jointly by ``transformer_enc_layers`` deformable-attention layers; each finer one
    (p2) is added FPN-style to the upsampled coarser output.

    forward_features(features) returns (mask_features (N, mask_dim, H/4, W/4) — the per-pixel
    embedding the mask logits are read from; multi_scale_features — 3 maps (N, conv_dim, h, w)
    for the transformer decoder: the encoder outputs from the coarsest (1/32) to the finest
    (1/8), followed by the FPN outputs when the encoder has fewer than 3 levels).

    It computes what Mask2Former's ``MSDeformAttnPixelDecoder`` computes, with its
    initialisation, and runs in float32 under autocast as Mask2Former does (deformable attention
    is unstable in half precision).
    """

    @configurable
    def __init__(self, input_shape, *, transformer_in_features, conv_dim=256, mask_dim=256,
                 norm="GN", transformer_enc_layers=6, transformer_dim_feedforward=1024,
                 transformer_nheads=8, transformer_n_points=4, transformer_dropout=0.0,
                 common_stride=4):
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES names "
                             f"{missing}, which are not among the pixel decoder's inputs "
                             f"{sorted(input_shape)} (MODEL.SEM_SEG_HEAD.IN_FEATURES).")
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in by_stride]
        # Encoder levels from the coarsest to the finest, the order the decoder consumes.
        self.transformer_in_features = sorted(transformer_in_features,
                                              key=lambda k: -input_shape[k].stride)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(input_shape[k].channels, conv_dim, kernel_size=1),
                          nn.GroupNorm(32, conv_dim))
            for k in self.transformer_in_features)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        n_levels = len(self.transformer_in_features)
        self.level_embed = nn.Parameter(torch.randn(n_levels, conv_dim))
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, transformer_dim_feedforward, n_levels,
                                   transformer_nheads, transformer_n_points, transformer_dropout)
            for _ in range(transformer_enc_layers))
        # Mask2Former's encoder init: xavier for every matrix, then the deformable attention's own.
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.encoder:
            layer.self_attn._reset_parameters()

        # FPN steps for the finer features, down to ``common_stride`` (Mask2Former's choice).
        finest_encoded = min(input_shape[k].stride for k in self.transformer_in_features)
        self.fpn_features = [k for k in self.in_features
                             if common_stride <= input_shape[k].stride < finest_encoded]
        if len(self.transformer_in_features) + len(self.fpn_features) < NUM_DECODER_SCALES:
            raise ValueError(
                f"The pixel decoder must give the transformer decoder {NUM_DECODER_SCALES} scales, "
                f"but MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES "
                f"{self.transformer_in_features} and the finer IN_FEATURES {self.fpn_features} "
                f"(down to COMMON_STRIDE {common_stride}) give only "
                f"{len(self.transformer_in_features) + len(self.fpn_features)}: add features.")
        use_bias = norm == ""
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for k in self.fpn_features[::-1]:  # coarse to fine
            self.lateral_convs.append(Conv2d(input_shape[k].channels, conv_dim, kernel_size=1,
                                             bias=use_bias, norm=get_norm(norm, conv_dim)))
            self.output_convs.append(Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1,
                                            bias=use_bias, norm=get_norm(norm, conv_dim),
                                            activation=F.relu))
        for conv in list(self.lateral_convs) + list(self.output_convs):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        self.mask_dim = mask_dim

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(self, features):
        features = {k: v.float() for k, v in features.items()}
        device_type = next(iter(features.values())).device.type
        if not torch.is_autocast_enabled(device_type):
            return self._forward_fp32(features)
        with torch.autocast(device_type, enabled=False):
            return self._forward_fp32(features)

    def _forward_fp32(self, features):
        srcs, pos = [], []
        for level, (name, proj) in enumerate(zip(self.transformer_in_features, self.input_proj)):
            x = proj(features[name])
            srcs.append(x.flatten(2).transpose(1, 2))
            pos.append(sine_position_embedding(x.shape, x.shape[1] // 2, x.device, x.dtype)
                       .flatten(2).transpose(1, 2) + self.level_embed[level])
        shapes = [tuple(features[k].shape[-2:]) for k in self.transformer_in_features]
        src, pos = torch.cat(srcs, 1), torch.cat(pos, 1)
        reference_points = encoder_reference_points(shapes, src.shape[0], src.device, src.dtype)
        for layer in self.encoder:
            src = layer(src, pos, reference_points, shapes)

        n = src.shape[0]
        multi_scale = [y.transpose(1, 2).reshape(n, -1, h, w) for y, (h, w) in
                       zip(src.split([h * w for h, w in shapes], dim=1), shapes)]
        outs = list(multi_scale)
        for name, lateral, output in zip(self.fpn_features[::-1], self.lateral_convs,
                                         self.output_convs):
            x = lateral(features[name])
            outs.append(output(x + F.interpolate(outs[-1], size=x.shape[-2:], mode="bilinear",
                                                 align_corners=False)))
        return self.mask_features(outs[-1]), outs[:NUM_DECODER_SCALES]

    def forward(self, features):
        return self.forward_features(features)
