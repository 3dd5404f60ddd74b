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
        # (N, size): does a column (row) hold a pixel? amax of the bytes, ~30x faster than
        # any() on bool tensors on CPU.
        hit = masks.view(torch.uint8).amax(axis)
        nonempty = hit.bool().any(1)
        first = hit.argmax(1)
        last = size - hit.flip(1).argmax(1)
        boxes[nonempty, lo] = first[nonempty].float()
        boxes[nonempty, hi] = last[nonempty].float()
    return boxes


def threshold_resized(logits, resize, threshold=0.0, chunk_size=8):
    """``resize(logits) > threshold`` as a bool (P, H, W) tensor, resizing ``chunk_size`` maps
    at a time: the float maps of all P never exist at once (on CPU, mapping fresh memory for
    them costs about as much as resizing), and each chunk is thresholded into the output.

    ``logits`` (P, h, w); ``resize`` maps a (p, h, w) chunk to (p, H, W) float logits."""
    first = resize(logits[:chunk_size])
    out = torch.empty((len(logits), *first.shape[1:]), dtype=torch.bool, device=logits.device)
    torch.gt(first, threshold, out=out[:chunk_size])
    for start in range(chunk_size, len(logits), chunk_size):
        torch.gt(resize(logits[start: start + chunk_size]), threshold,
                 out=out[start: start + chunk_size])
    return out
