"""Full-resolution bool masks from low-resolution logits, and their boxes, on CPU budgets; mask
logits kept as their factors for the set criterion (``FactoredMaskLogits``)."""
import torch

from .bilinear import bilinear_corners, framed_rows, sample_bilinear


def mask_boxes(masks):
    """Tight (x0, y0, x1, y1) boxes of bool masks (N, H, W), all zeros for empty masks, as
    detectron2's ``BitMasks.get_bounding_boxes`` gives them (without its per-mask loop)."""
    boxes = torch.zeros(len(masks), 4, dtype=torch.float32, device=masks.device)
    if masks.numel() == 0:
        return boxes
    h, w = masks.shape[-2:]
    for axis, size, (lo, hi) in ((1, w, (0, 2)), (2, h, (1, 3))):
        # (N, size): does a column (row) hold a pixel? amax over the bytes: reductions over
        # bool tensors are far slower on CPU.
        hit = masks.view(torch.uint8).amax(axis)
        nonempty = hit.bool().any(1)
        first = hit.argmax(1)
        last = size - hit.flip(1).argmax(1)
        boxes[nonempty, lo] = first[nonempty].float()
        boxes[nonempty, hi] = last[nonempty].float()
    return boxes


def threshold_resized(items, resize, size, threshold=0.0, chunk_size=8):
    """``resize(items) > threshold`` as a bool (P, *size) tensor, resizing ``chunk_size`` items
    at a time: the float maps of all P never exist at once (on CPU, mapping fresh memory for
    them costs about as much as resizing), and each chunk is thresholded into the output.

    ``items`` (P, ...): low-resolution logits, or indices of them; ``resize`` maps a chunk
    ``items[a:b]`` to (b - a, *size) float logits."""
    out = torch.empty((len(items), *size), dtype=torch.bool, device=items.device)
    for start in range(0, len(items), chunk_size):
        chunk = slice(start, start + chunk_size)
        torch.gt(resize(items[chunk]), threshold, out=out[chunk])
    return out


def mask_nms(masks, scores, iou_threshold, labels=None):
    """Greedy non-maximum suppression by mask IoU. ``masks`` (P, h, w) bool, ``scores`` (P,).
    With ``labels`` (P,), a mask is suppressed only by a better one of another label (duplicates
    across classes; within a class the model's own outputs stand). Returns the indices kept,
    best score first."""
    order = scores.argsort(descending=True)
    flat = masks[order].flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1)
    if labels is not None:
        ordered = labels[order]
        iou = iou * (ordered[:, None] != ordered[None, :])
    keep = []
    for i in range(len(order)):
        if not keep or iou[i, keep].max() <= iou_threshold:
            keep.append(i)
    return order[keep]


class FactoredMaskLogits:
    """Mask logits ``einsum("...qc,...chw->...qhw", embed, features)`` kept as their two
    factors: ``embed`` (B, Q, C) and ``features`` (B, C, h, w), or one image's (Q, C) and
    (C, h, w).

    A set criterion needs the full maps of its matched queries only, and its matcher needs every
    query at a few shared points only. Bilinear point sampling is linear, so sampling the features
    and then taking the product gives the sampled logits: ``rows`` and ``at_points`` compute
    what indexing and point-sampling the full product would, equal up to rounding, without
    the (B, Q, h, w) product (a Q x C x h x w product and its backward per decoder layer).

    ``shared``: a dict shared by the predictions made from the same ``features`` (all layers of a
    decoder), where each image's channels-last copy of them is kept for ``at_points``.
    """

    def __init__(self, embed, features, shared=None, image=None):
        self.embed, self.features = embed, features
        self._shared = {} if shared is None else shared
        self._image = image

    def __getitem__(self, image):
        """One image's factors (an int index of a batched instance)."""
        return FactoredMaskLogits(self.embed[image], self.features[image], self._shared, image)

    def dense(self):
        """The full (..., Q, h, w) logits."""
        return torch.einsum("...qc,...chw->...qhw", self.embed, self.features)

    def rows(self, queries):
        """One image's full logits of ``queries`` (an index tensor): (len(queries), h, w)."""
        return torch.einsum("qc,chw->qhw", self.embed[queries], self.features)

    def at_points(self, coords):
        """One image's logits of every query at ``coords`` (P, 2) in [0, 1] (x, y), bilinear as
        detectron2's ``point_sample`` with align_corners=False: (Q, P)."""
        h, w = self.features.shape[-2:]
        rows = self._shared.get(self._image)
        if rows is None:  # ((h + 2) * (w + 2), C), the features framed by zeros
            rows = framed_rows(self.features.detach().permute(1, 2, 0)[None])[0]
            if self._image is not None:
                self._shared[self._image] = rows
        index, fractions = bilinear_corners(coords, torch.tensor([w, h], device=coords.device))
        sampled = sample_bilinear(rows, index, fractions[:, None])  # (P, C)
        return self.embed @ sampled.T.to(self.embed.dtype)
