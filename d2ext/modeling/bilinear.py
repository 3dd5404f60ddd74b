"""Bilinear sampling as sums of channels-last rows: the 4 corners of each point, each with its
bilinear weight (times a weight of the point), summed by ``F.embedding_bag``.

``grid_sample`` computes the same samples (align_corners=False, zero padding), but it gathers
each channel apart from a channels-first map; ``embedding_bag`` reads each corner's channels as
one contiguous row.
"""
import torch
from torch.nn import functional as F


def framed_rows(maps):
    """Channels-last maps (N, h, w, D) -> (N, (h + 2) * (w + 2), D): each map framed by one pixel
    of zeros, so that a corner just outside reads a zero."""
    return F.pad(maps, (0, 0, 1, 1, 1, 1)).flatten(1, 2)


def bilinear_corners(locations, size):
    """Where points fall on framed maps (``framed_rows``).

    locations (..., 2): (x, y) in [0, 1] of the map (0 = left/top border, 1 = right/bottom
    border; outside samples zeros); size: a (..., 2) integer tensor (w, h) broadcastable to it.
    Returns rows (..., 4) int32, the framed-map rows of the 4 corners (top-left, top-right,
    bottom-left, bottom-right), and fractions (..., 2), the point's offset (x, y) from the
    top-left corner in [0, 1]: grid_sample's bilinear weights with align_corners=False and zero
    padding (``sample_bilinear``). The fractions are differentiable in ``locations``; a location
    within rounding of a pixel centre may get the neighbouring corners that grid_sample does not
    (its gradient then differs, its value not).
    """
    dtype = torch.promote_types(locations.dtype, torch.float32)
    extent = size.to(dtype)
    # Pixel coordinates (centres at i + 0.5), clamped onto the frame [-1, size]; the top-left
    # corner at most size - 1, so that the other one is on the frame.
    xy = torch.clamp(locations.to(dtype) * extent - 0.5, extent.new_tensor(-1.0), extent)
    corner = torch.minimum(xy.detach().floor(), extent - 1)
    framed_w = size[..., 0].int() + 2
    top_left = (corner[..., 1].int() + 1) * framed_w + corner[..., 0].int() + 1
    steps = torch.stack((torch.zeros_like(framed_w), torch.ones_like(framed_w), framed_w,
                         framed_w + 1), -1)
    return top_left[..., None] + steps, xy - corner


class _BilinearBags(torch.autograd.Function):
    """Bags of weighted rows: out[b] = sum over points k and their 4 corners c of
    scale[b, k] * bilinear_c(fractions[b, k]) * rows[index[b, 4 k + c]].

    The backward is written out: the rows' gradient is one more bag sum, each row gathering the
    output gradients of the samples that read it, sorted by row (PyTorch's own embedding_bag
    backward adds the samples into the rows one at a time); the gradients of the fractions and
    of the point weights come from the 4 corners' dot products in one pass over the points,
    where autograd would take the bilinear products apart sample by sample."""

    @staticmethod
    def forward(rows, index, fractions, scale):
        fx, fy = fractions.unbind(-1)
        wy = torch.stack((1 - fy, fy), -1) * scale[..., None]
        weights = (wy[..., :, None] * torch.stack((1 - fx, fx), -1)[..., None, :]).flatten(-3)
        return F.embedding_bag(index, rows, per_sample_weights=weights, mode="sum"), weights

    @staticmethod
    def setup_context(ctx, inputs, output):
        rows, index, fractions, scale = inputs
        ctx.save_for_backward(rows, index, fractions, scale, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_out, _):
        rows, index, fractions, scale, weights = ctx.saved_tensors
        bags, size = index.shape
        flat = index.flatten()
        grad_out = grad_out.contiguous()
        grad_rows = grad_fractions = grad_scale = None
        if ctx.needs_input_grad[0]:
            # Samples grouped by the row they read: bag r holds the samples of row r.
            sorted_rows, order = flat.sort(stable=True)  # stable: the same sums every run
            starts = torch.searchsorted(sorted_rows, torch.arange(
                len(rows), device=flat.device, dtype=sorted_rows.dtype))
            grad_rows = F.embedding_bag(
                (order // size).to(flat.dtype), grad_out, starts.to(flat.dtype),
                per_sample_weights=weights.flatten().index_select(0, order), mode="sum")
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            offsets = torch.arange(0, bags * size, size, device=flat.device, dtype=flat.dtype)
            owners = torch.arange(bags, device=flat.device, dtype=flat.dtype).repeat_interleave(
                size)
            # d out / d weight of each sample, as (top-left, top-right, bottom-left, bottom-right)
            dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out, rows, flat, offsets, owners, 0, -1).view(*scale.shape, 4)
            top_left, top_right, bottom_left, bottom_right = dots.unbind(-1)
            fx, fy = fractions.unbind(-1)
            top = top_left + fx * (top_right - top_left)  # the top corners, weighted along x
            bottom = bottom_left + fx * (bottom_right - bottom_left)
            grad_scale = top + fy * (bottom - top)
            along_x = (top_right - top_left) + fy * ((bottom_right - bottom_left)
                                                     - (top_right - top_left))
            grad_fractions = torch.stack((along_x, bottom - top), -1) * scale[..., None]
        return grad_rows, None, grad_fractions, grad_scale


def sample_bilinear(rows, index, fractions, scale=None):
    """Bilinear samples of the rows of framed maps, summed per bag with weights.

    rows (R, D); index (B, 4 K): each bag's K points' corner rows (``bilinear_corners``, offset
    to the map's rows in ``rows``); fractions (B, K, 2); scale (B, K): a weight of each point
    (1 if None). Returns (B, D): per bag, the sum over its points of scale x the point's
    bilinear sample.
    """
    index = index.int() if len(rows) < 2**31 else index.long()
    if scale is None:
        scale = fractions.new_ones(fractions.shape[:-1])
    return _BilinearBags.apply(rows, index, fractions.to(rows.dtype), scale.to(rows.dtype))[0]
