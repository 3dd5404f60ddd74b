"""Sine positional encoding of a feature map (DETR / Mask2Former)."""
import math

import torch


def sine_position_embedding(shape, num_feats, device, dtype, temperature=10000.0):
    """(B, 2 * num_feats, H, W) encoding of ``shape`` = (B, C, H, W): ``num_feats`` channels for y
    then ``num_feats`` for x, each interleaving sin and cos of the position at geometrically spaced
    frequencies.

    Rows and columns are numbered 1..n and normalised to ``i / n * 2 pi``, Mask2Former's
    ``PositionEmbeddingSine(normalize=True)`` (not Deformable DETR's ``(i - 0.5) / n``). Without
    a padding mask, as in Mask2Former, padding is encoded as image."""
    b, _, h, w = shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + eps) * scale
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + eps) * scale
    dim_t = torch.arange(num_feats, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y, pos_x = y[:, None] / dim_t, x[:, None] / dim_t  # (H, F), (W, F)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)),
                    dim=-1)
    return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1).to(dtype)
