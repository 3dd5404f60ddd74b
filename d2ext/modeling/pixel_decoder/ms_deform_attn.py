"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

It runs wherever PyTorch runs (CPU, Apple MPS, CUDA) with no compiled extension: the compiled op
is the part of Mask2Former users most often fail to build.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..bilinear import bilinear_corners, framed_rows, sample_bilinear


def _exporting():
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return (is_exporting is not None and is_exporting()) or torch.jit.is_tracing()


def ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights):
    """Weighted sum of values bilinearly sampled at given locations of several feature maps.

    value (N, S, M, D): the flattened maps of all levels, level l holding H_l * W_l entries;
    spatial_shapes: L pairs (H_l, W_l); sampling_locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1]
    of each level (0 = left/top border, 1 = right/bottom border; outside samples zeros);
    attention_weights (N, Lq, M, L, P). Returns (N, Lq, M * D).

    Each output row is one bag of the value rows at the 4 bilinear corners of its L * P points,
    weighted bilinear x attention (``d2ext.modeling.bilinear``). ``grid_sample_core`` computes
    the same sums with ``grid_sample``, channel by channel and with a further pass to weight
    them; an export (torch.export, ONNX) writes that one, as ONNX has GridSample and exporters
    write a bag sum as a loop over the bags. The two agree to rounding
    (tests/test_ms_deform_attn.py).
    """
    if _exporting():
        return grid_sample_core(value, spatial_shapes, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    device = value.device
    # Each head's maps, channels last, framed by zeros: rows (image, head, level, pixel), so that
    # the corners of a point are near each other in memory.
    framed, firsts, start, total = [], [], 0, 0
    for h, w in spatial_shapes:
        framed.append(framed_rows(value[:, start:start + h * w].transpose(1, 2)
                                  .reshape(n * m, h, w, d)))
        firsts.append(total)
        start, total = start + h * w, total + (h + 2) * (w + 2)
    rows = torch.cat(framed, 1).view(n * m * total, d)
    size = torch.tensor([(w, h) for h, w in spatial_shapes], device=device).view(
        num_levels, 1, 2)
    index, fractions = bilinear_corners(sampling_locations, size)  # (N, Lq, M, L, P, 4 | 2)
    index_dtype = torch.int32 if n * m * total < 2**31 else torch.int64
    first = (torch.arange(n * m, device=device, dtype=index_dtype).view(n, 1, m, 1, 1) * total
             + torch.tensor(firsts, device=device, dtype=index_dtype).view(num_levels, 1))
    index = index + first[..., None]
    bags = n * lq * m
    out = sample_bilinear(rows, index.view(bags, -1), fractions.view(bags, -1, 2),
                          attention_weights.reshape(bags, -1))
    return out.view(n, lq, m * d)


def grid_sample_core(value, spatial_shapes, sampling_locations, attention_weights):
    """``ms_deform_attn_core`` with ``F.grid_sample``, per level (exports write this one)."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1], align_corners=False
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels, p)
    out, start = None, 0
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        start += h * w
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (N*M, D, Lq, P)
        # Weighted per level and accumulated: no (N*M, D, Lq, L*P) concatenation.
        term = (sampled * weights[..., level, :]).sum(-1)  # (N*M, D, Lq)
        out = term if out is None else out + term
    return out.view(n, m * d, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` learned offsets around its reference point in each of
    ``n_levels`` maps, per head.

    forward(query (N, Lq, C), reference_points (N, Lq, L, 2) in [0, 1] as (x, y),
    value (N, S, C) = the flattened maps, spatial_shapes: L pairs (H_l, W_l)) -> (N, Lq, C).
    The shapes are Python integers, not a tensor (Deformable DETR passes an int64 tensor and
    reads it back on the host): a graph export then keeps them symbolic in the image size.
    """

    def __init__(self, d_model=256, n_levels=3, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MSDeformAttn: d_model {d_model} is not divisible by n_heads "
                             f"{n_heads}; change MODEL.SEM_SEG_HEAD.CONVS_DIM or "
                             "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS.")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        # Offsets start on a ring of directions, k pixels out for point k (Deformable DETR).
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        ring = ring.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        ring = ring * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query, reference_points, value, spatial_shapes):
        n, lq, c = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value).view(n, value.shape[1], m, c // m)
        # Offsets and attention logits in one product: one pass over the queries, both ways.
        both = F.linear(query, torch.cat((self.sampling_offsets.weight,
                                          self.attention_weights.weight)),
                        torch.cat((self.sampling_offsets.bias, self.attention_weights.bias)))
        offsets, logits = both.split([m * lv * p * 2, m * lv * p], -1)
        offsets = offsets.view(n, lq, m, lv, p, 2)
        weights = logits.reshape(n, lq, m, lv * p).softmax(-1)
        # Offsets are in pixels of each level: divide by (W, H) to get [0, 1] units.
        # torch.tensor, not as_tensor: under torch.export only the former keeps them symbolic.
        normalizer = torch.tensor([(w, h) for h, w in spatial_shapes], dtype=offsets.dtype,
                                  device=offsets.device)  # (L, 2)
        locations = reference_points[:, :, None, :, None, :] + \
            offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn_core(value, spatial_shapes, locations,
                                  weights.view(n, lq, m, lv, p))
        return self.output_proj(out)
