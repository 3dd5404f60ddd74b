"""Batched SAM decoding of many prompts on one image embedding."""
import math

import torch

from .shared_image_decoder import predict_masks_shared_image


@torch.no_grad()
def decode_prompts(sam, embedding, points, labels, boxes=None, batch_size=64,
                   shared_image=True, image_size=None):
    """SAM's prompt encoder and mask decoder on ``batch_size`` prompts per call.

    ``embedding``: (1, C, g, g) from ``sam.image_encoder``; ``points`` (P, n, 2) xy and
    ``boxes`` (P, 4) XYXY in SAM's input frame (the image resized to the encoder's size);
    ``labels`` (P, n). Point-only prompts are ambiguous, so SAM proposes 3 masks and the one
    with the best predicted IoU is kept; a box settles the ambiguity (one mask).
    Returns low-resolution mask logits (P, 4g, 4g) and predicted IoUs (P,). With
    ``image_size`` (h, w), the size of the image inside SAM's padded square, the logits cover
    just the grid cells over the image: (P, 4 ceil(h/s), 4 ceil(w/s)) for SAM's patch size s.

    ``shared_image`` uses :func:`predict_masks_shared_image` (same result, far less memory
    traffic); False calls SAM's ``mask_decoder`` itself.
    """
    multimask = boxes is None
    candidates = slice(1, None) if multimask else slice(0, 1)  # as MaskDecoder.forward
    dense_pe = sam.prompt_encoder.get_dense_pe()
    g = embedding.shape[-1]
    grid = None
    if image_size is not None:
        patch = sam.image_encoder.img_size // g
        grid = tuple(min(g, math.ceil(side / patch)) for side in image_size)
    logits, ious, cache = [], [], {}  # cache: the image's side, shared by all batches
    for start in range(0, points.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        sparse, dense = sam.prompt_encoder(points=(points[chunk], labels[chunk]),
                                           boxes=None if boxes is None else boxes[chunk],
                                           masks=None)
        if shared_image:  # no mask prompts: the dense embedding is the same for all prompts
            masks, iou = predict_masks_shared_image(sam.mask_decoder, embedding, dense_pe,
                                                    sparse, dense[:1], candidates, grid, cache)
        else:
            masks, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=dense_pe,
                                          sparse_prompt_embeddings=sparse,
                                          dense_prompt_embeddings=dense,
                                          multimask_output=multimask)
            iou, best = iou.max(1)
            masks = masks[torch.arange(len(best), device=best.device), best]
            if grid is not None:
                masks = masks[:, : 4 * grid[0], : 4 * grid[1]]
        logits.append(masks)
        ious.append(iou)
    return torch.cat(logits), torch.cat(ious)
