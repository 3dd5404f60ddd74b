"""Full-resolution bool masks from low-resolution logits, and their boxes, on CPU budgets."""
import torch


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
