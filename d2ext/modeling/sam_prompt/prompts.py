"""Prompt strategies: where SAM is asked for masks, chosen from DINO patch features.

Every strategy reads the L2-normalised patch features of one image, ``(C, h, w)`` on the stride-16
grid of an ``(H, W)`` image, and returns :class:`Prompts` in that image's pixel coordinates.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..backbone.archs import DINO_STRIDE

PROMPT_METHODS = ("clustering", "attention", "prototypes", "grid")


@dataclass
class Prompts:
    """P prompts: ``points`` (P, n, 2) xy pixels with ``labels`` (P, n) (1 = foreground);
    optional ``boxes`` (P, 4) XYXY pixels and ``classes`` (P,) prototype indices."""
    points: torch.Tensor
    labels: torch.Tensor
    boxes: Optional[torch.Tensor] = None
    classes: Optional[torch.Tensor] = None

    def __len__(self):
        return self.points.shape[0]


def _cell_center(i, j):
    return [(j + 0.5) * DINO_STRIDE, (i + 0.5) * DINO_STRIDE]


def _region_prompts(region_maps, priority, image_size, classes=None):
    """One point + box prompt per connected region. ``region_maps``: list of (h, w) bool maps;
    ``priority``: list of (h, w) scores, the point goes to the region's best cell (its centre;
    the caller clamps centres of partial edge cells into the image)."""
    from scipy import ndimage  # here: `import d2ext` stays light

    points, boxes, kept_classes = [], [], []
    height, width = image_size
    for index, (region, score) in enumerate(zip(region_maps, priority)):
        components, count = ndimage.label(region.cpu().numpy())
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        # Fragments of one cell are noise unless they are all the region has.
        for c in [c for c in range(1, count + 1) if sizes[c - 1] >= 2 or sizes.max() < 2]:
            ii, jj = np.nonzero(components == c)
            best = int(score[ii, jj].argmax())
            points.append(_cell_center(ii[best], jj[best]))
            boxes.append([jj.min() * DINO_STRIDE, ii.min() * DINO_STRIDE,
                          min((jj.max() + 1) * DINO_STRIDE, width),
                          min((ii.max() + 1) * DINO_STRIDE, height)])
            kept_classes.append(index if classes is None else classes[index])
    device = priority[0].device if len(priority) else "cpu"
    points = torch.tensor(points, dtype=torch.float32, device=device).reshape(-1, 1, 2)
    return Prompts(points=points,
                   labels=torch.ones(points.shape[:2], device=device),
                   boxes=torch.tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4),
                   classes=torch.tensor(kept_classes, dtype=torch.long, device=device))


def kmeans(x, k, iterations=20):
    """Spherical k-means of rows of ``x`` (N, C), L2-normalised; deterministic farthest-point
    initialisation. Returns (assignment (N,), centres (k, C))."""
    k = min(k, x.shape[0])
    centres = [int((x @ x.mean(0)).argmax())]
    for _ in range(k - 1):  # each new centre: the point least similar to the chosen ones
        centres.append(int((x @ x[centres].T).max(1).values.argmin()))
    centres = x[centres].clone()
    for _ in range(iterations):
        assignment = (x @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, x)
        filled = sums.norm(dim=1) > 0  # an emptied cluster keeps its centre
        new = torch.where(filled[:, None], torch.nn.functional.normalize(sums, dim=1), centres)
        if torch.equal(new, centres):
            break
        centres = new
    return (x @ centres.T).argmax(1), centres


def clustering_prompts(features, image_size, num_segments):
    """k-means of the patch features into ``num_segments`` clusters; every connected region of
    a cluster gives a point (its cell nearest the cluster centre) and its bounding box."""
    c, h, w = features.shape
    flat = features.flatten(1).T
    assignment, centres = kmeans(flat, num_segments)
    labels = assignment.view(h, w)
    closeness = (flat @ centres.T).T.reshape(-1, h, w)
    prompts = _region_prompts([labels == k for k in range(len(centres))], list(closeness),
                              image_size)
    prompts.classes = None  # cluster ids are not classes
    return prompts


def attention_prompts(saliency, num_points):
    """Point prompts at the ``num_points`` most salient cells of ``saliency`` (h, w); a chosen
    cell suppresses its 8 neighbours so the points spread over objects."""
    h, w = saliency.shape
    score = saliency.clone().float()
    points = []
    for _ in range(min(num_points, h * w)):
        index = int(score.argmax())
        if score.view(-1)[index] == float("-inf"):
            break
        i, j = divmod(index, w)
        points.append(_cell_center(i, j))
        score[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2] = float("-inf")
    points = torch.tensor(points, dtype=torch.float32, device=saliency.device).reshape(-1, 1, 2)
    return Prompts(points=points, labels=torch.ones(points.shape[:2], device=saliency.device))


def prototype_prompts(features, prototypes, image_size, min_similarity):
    """Cells labelled with their most similar prototype (cosine, ``prototypes`` (K, C)
    L2-normalised) when that similarity reaches ``min_similarity``; each connected region of a
    class gives a point (its most similar cell), its box and the class. Also returns the
    similarity maps (K, h, w) for scoring."""
    similarity = torch.einsum("kc,chw->khw", prototypes, features)
    best, label = similarity.max(0)
    foreground = best >= min_similarity
    regions = [(label == k) & foreground for k in range(len(prototypes))]
    return _region_prompts(regions, list(similarity), image_size), similarity


def grid_prompts(image_size, points_per_side, device="cpu"):
    """SAM's everything mode: a regular ``points_per_side``² grid of single-point prompts."""
    height, width = image_size
    steps = (torch.arange(points_per_side, device=device) + 0.5) / points_per_side
    ys, xs = torch.meshgrid(steps * height, steps * width, indexing="ij")
    points = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2)
    return Prompts(points=points, labels=torch.ones(points.shape[:2], device=device))


@contextmanager
def capture_last_attention_input(backbone):
    """While active, keeps the input (hidden states, RoPE) of the last ViT block's attention in
    the yielded dict, so :func:`cls_attention_saliency` can recompute its attention cheaply
    (flash/SDPA attention returns no weights)."""
    captured = {}
    attention = backbone.blocks[-1].attention

    def hook(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["rope"] = kwargs.get("position_embeddings")

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def cls_attention_saliency(backbone, captured, grid_size):
    """The class token's attention over the patches in the last block, averaged over heads:
    (h, w) for image 0 of the captured batch. DINO's class-token attention concentrates on
    objects, which makes it a prompt saliency without any training."""
    attention = backbone.blocks[-1].attention
    hidden = captured["hidden"][:1]
    heads = backbone.arch.heads
    q = attention.q_proj(hidden[:, :1]).view(1, 1, heads, -1).transpose(1, 2)
    k = attention.k_proj(hidden).view(1, hidden.shape[1], heads, -1).transpose(1, 2)
    if captured["rope"] is not None:  # DINOv3: keys of patch tokens are rotated (RoPE)
        from transformers.models.dinov3_vit.modeling_dinov3_vit import rotate_half

        cos, sin = captured["rope"]
        skip = k.shape[2] - cos.shape[-2]
        patches = k[:, :, skip:]
        k = torch.cat([k[:, :, :skip], patches * cos + rotate_half(patches) * sin], dim=2)
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # (1, heads, 1, T)
    patch_weights = weights[0, :, 0, backbone.arch.num_prefix_tokens:].mean(0)
    return patch_weights.view(*grid_size)
