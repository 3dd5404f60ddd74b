"""Bilinear sampling as sums of channels-last rows: the 4 corners of each point, each with its
bilinear weight, summed by ``F.embedding_bag`` (which can fold in further per-point weights).

``grid_sample`` computes the same samples (align_corners=False, zero padding), but it gathers
each channel apart from a channels-first map; ``embedding_bag`` reads each corner's channels as
one contiguous row, which takes a fraction of the time on a CPU.
"""
import torch
from torch.nn import functional as F


def framed_rows(maps):
    """Channels-last maps (N, h, w, D) -> (N, (h + 2) * (w + 2), D): each map framed by one pixel
    of zeros, so that a corner just outside reads a zero."""
    return F.pad(maps, (0, 0, 1, 1, 1, 1)).flatten(1, 2)


def bilinear_corners(locations, size, scale=None):
    """The corners and bilinear weights of points on framed maps (``framed_rows``).

    locations (..., 2): (x, y) in [0, 1] of the map (0 = left/top border, 1 = right/bottom
    border; outside samples zeros); size: a (..., 2) integer tensor (w, h) broadcastable to it;
    scale (...), optional: a further weight of each point. Returns rows (..., 4) int32, the
    framed-map rows of the 4 corners (top-left, top-right, bottom-left, bottom-right), and
    weights (..., 4), their bilinear weights (times ``scale``): grid_sample's with
    align_corners=False and zero padding. The weights are differentiable in ``locations`` and
    ``scale``; a location within rounding of a pixel centre may get the neighbouring corners
    that grid_sample does not (its gradient then differs, its value not).
    """
    dtype = torch.promote_types(locations.dtype, torch.float32)
    extent = size.to(dtype)
    # Pixel coordinates (centres at i + 0.5), clamped onto the frame [-1, size]; the top-left
    # corner at most size - 1, so that the other one is on the frame.
    xy = torch.clamp(locations.to(dtype) * extent - 0.5, extent.new_tensor(-1.0), extent)
    corner = torch.minimum(xy.detach().floor(), extent - 1)
    fx, fy = (xy - corner).unbind(-1)
    framed_w = size[..., 0].int() + 2
    corner = corner.int() + 1  # in the framed map
    top_left = corner[..., 1] * framed_w + corner[..., 0]
    steps = torch.stack((torch.zeros_like(framed_w), torch.ones_like(framed_w), framed_w,
                         framed_w + 1), -1)
    rows = top_left[..., None] + steps
    wy = torch.stack((1 - fy, fy), -1)
    if scale is not None:
        wy = wy * scale[..., None]
    weights = (wy[..., :, None] * torch.stack((1 - fx, fx), -1)[..., None, :]).flatten(-2)
    return rows, weights


class _WeightedBags(torch.autograd.Function):
    """``F.embedding_bag`` of fixed-size bags with per-sample weights, whose backward reaches
    the rows' gradient as one more bag sum: each row gathers the output gradients of the samples
    that read it, the samples sorted by row. PyTorch's own backward adds the samples into the
    rows one at a time instead."""

    @staticmethod
    def forward(rows, index, weights):
        return F.embedding_bag(index, rows, per_sample_weights=weights, mode="sum")

    @staticmethod
    def setup_context(ctx, inputs, output):
        rows, index, weights = inputs
        ctx.save_for_backward(rows, index, weights)

    @staticmethod
    def backward(ctx, grad_out):
        rows, index, weights = ctx.saved_tensors
        bags, size = index.shape
        flat = index.flatten()
        grad_rows = grad_weights = None
        if ctx.needs_input_grad[0]:
            # Samples grouped by the row they read: bag r holds the samples of row r.
            sorted_rows, order = flat.sort(stable=True)  # stable: the same sums every run
            starts = torch.searchsorted(sorted_rows, torch.arange(
                len(rows), device=flat.device, dtype=sorted_rows.dtype))
            grad_rows = F.embedding_bag(
                (order // size).to(flat.dtype), grad_out.contiguous(),
                starts.to(flat.dtype), per_sample_weights=weights.flatten()[order], mode="sum")
        if ctx.needs_input_grad[2]:
            offsets = torch.arange(0, bags * size, size, device=flat.device, dtype=flat.dtype)
            owners = torch.arange(bags, device=flat.device, dtype=flat.dtype).repeat_interleave(
                size)
            grad_weights = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out.contiguous(), rows, flat, offsets, owners, 0, -1).view(bags, size)
        return grad_rows, None, grad_weights


def sample_rows(rows, index, weights):
    """Bags of ``rows`` (R, D): out[b] = sum over k of weights[b, k] * rows[index[b, k]];
    index, weights (B, K) -> (B, D)."""
    index = index.int() if len(rows) < 2**31 else index.long()
    return _WeightedBags.apply(rows, index, weights.to(rows.dtype))
