"""From one image's (class logits, mask logits) to detectron2's outputs: ``Instances``,
``sem_seg`` and ``panoptic_seg``, at the original image size.

Shared by the Mask2Former-style and the encoder-only (EoMT) meta-architectures, so that
``COCOEvaluator``, ``SemSegEvaluator``, ``COCOPanopticEvaluator``, the ``Visualizer`` and
``DefaultPredictor`` work on either unchanged.

The rules are Mask2Former's (``MaskFormer.{semantic,instance,panoptic}_inference``; EoMT uses
the same ones). Deliberate differences, each for a reason:
- the mask logits are resized once, from the padded grid straight to the output size
  (``resize_mask_logits``), where Mask2Former upsamples to the padded input, crops and resizes
  again: the same bilinear model in one pass over the full-size maps instead of two (with
  ``two_pass=True``, as EoMT's protocol calls it, those two passes are made: EoMT's published
  figures are measured with them, and per-pixel results then equal its evaluation code's);
- with only SEMANTIC_ON, the class scores are combined from the resized mask logits, the order
  Mask2Former uses whenever instance or panoptic output is on (alone, it combines at the padded
  input resolution and resizes the class scores);
- instances get their masks' tight boxes (Mask2Former leaves them zero), for box AP and the
  Visualizer; mask AP is unaffected.
"""
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from torch.nn import functional as F

from .mask_ops import mask_boxes


def resize_mask_logits(mask_logits, padded_size, image_size, output_size, two_pass=False):
    """Mask logits on the padded input's grid -> logits over the image at ``output_size``.

    mask_logits (Q, h, w) cover the padded network input ``padded_size`` (Hp, Wp) (e.g. h = Hp/4);
    the image occupies its top-left ``image_size`` (hi, wi). Returns (Q, H, W) for ``output_size``
    (H, W), each output pixel bilinearly sampled at its centre, in one resampling (Mask2Former
    upsamples to the padded size, crops and resizes again: two passes over Q full-size maps).
    ``two_pass``: make those two passes instead (EoMT's ``revert_resize_and_pad_logits_*`` does
    the same: its evaluation's masks differ from one pass's along every boundary).
    """
    x = mask_logits[None]
    if two_pass:
        if tuple(x.shape[-2:]) != tuple(padded_size):
            x = F.interpolate(x, size=tuple(padded_size), mode="bilinear", align_corners=False)
        x, padded_size = x[..., :image_size[0], :image_size[1]], image_size
    if tuple(image_size) == tuple(padded_size):  # no padding: one plain interpolation is exact
        if tuple(x.shape[-2:]) == tuple(output_size):
            return x[0]
        return F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)[0]
    # Sample the grid at each output pixel's centre, in [-1, 1] over the padded input.
    ys = (torch.arange(output_size[0], device=x.device, dtype=x.dtype) + 0.5) \
        * (2 * image_size[0] / (output_size[0] * padded_size[0])) - 1
    xs = (torch.arange(output_size[1], device=x.device, dtype=x.dtype) + 0.5) \
        * (2 * image_size[1] / (output_size[1] * padded_size[1])) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0]


def semantic_inference(mask_cls, mask_logits):
    """Per-class scores (K, H, W) = sum over queries of p(class) * sigmoid(mask).

    mask_cls (Q, K+1) logits (last = no object), mask_logits (Q, H, W)."""
    return torch.einsum("qc,qhw->chw", mask_cls.softmax(-1)[:, :-1], mask_logits.sigmoid())


def select_instances(mask_cls, topk, thing_ids=None):
    """Top-k (query, class) pairs of an image over all queries x classes (a query may yield
    several classes). Returns scores (k,), classes (k,), query indices (k,)."""
    num_classes = mask_cls.shape[-1] - 1
    probs = mask_cls.softmax(-1)[:, :-1]
    scores, flat = probs.flatten().topk(min(topk, probs.numel()), sorted=False)
    classes, queries = flat % num_classes, flat // num_classes
    if thing_ids is not None:  # panoptic datasets: instances only for "thing" classes
        keep = torch.isin(classes, torch.as_tensor(sorted(thing_ids), device=classes.device))
        scores, classes, queries = scores[keep], classes[keep], queries[keep]
    return scores, classes, queries


def instance_inference(scores, classes, queries, image_size, resize):
    """``Instances`` of k selections: scores (k,), classes (k,), queries (k,) indices of queries
    whose full-resolution logits ``resize(query_indices)`` gives at ``image_size``.

    As Mask2Former: pred_masks (k, H, W) bool = full-resolution logits > 0; scores = class
    probability x mean mask probability inside the mask. Unlike Mask2Former (which leaves the
    boxes zero), pred_boxes are the masks' tight boxes, for box AP and the Visualizer.

    The full-resolution work is done once per distinct query and a few queries at a time: the
    float maps of all queries never exist at once.
    """
    unique, inverse = queries.unique(return_inverse=True)  # sorted: not the selection's order
    masks = torch.empty((len(unique), *image_size), dtype=torch.bool, device=scores.device)
    mask_scores = torch.empty(len(unique), device=scores.device)
    for start in range(0, len(unique), 8):
        chunk = slice(start, start + 8)
        logits = resize(unique[chunk])
        torch.gt(logits, 0, out=masks[chunk])
        inside = masks[chunk].flatten(1)
        mask_scores[chunk] = ((logits.sigmoid().flatten(1) * inside).sum(1)
                              / (inside.sum(1) + 1e-6))
    boxes = mask_boxes(masks)
    if not torch.equal(unique, queries):  # back to the selection's order, one mask per entry
        masks, boxes = masks[inverse], boxes[inverse]
    result = Instances(tuple(image_size))
    result.pred_masks = masks
    result.pred_boxes = Boxes(boxes)
    result.scores = scores * mask_scores[inverse]
    result.pred_classes = classes
    return result


def panoptic_inference(mask_cls, mask_logits, object_mask_threshold, overlap_threshold,
                       thing_ids):
    """Non-overlapping segments, Mask2Former's rule: queries whose best class is an object with
    probability above ``object_mask_threshold`` are kept; each pixel goes to the kept query with
    the highest p(class) * p(mask); a query's segment is the pixels it wins where its own
    p(mask) >= 0.5, dropped when empty or when the pixels it wins are fewer than
    ``overlap_threshold`` of its own mask's; stuff segments of one class are merged.

    (transformers' ``post_process_panoptic_segmentation`` differs: its segment is every pixel a
    query wins, its own-mask area is of p(class) * p(mask) >= 0.5, and a ratio equal to the
    threshold drops the segment.)

    Returns (panoptic_seg (H, W) int32 of segment ids, 0 = void; segments_info list of
    {"id", "isthing", "category_id"}), the format COCOPanopticEvaluator reads."""
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = mask_cls.softmax(-1).max(-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    probs = mask_logits[keep].sigmoid()
    scores, labels = scores[keep], labels[keep]
    panoptic_seg = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32,
                               device=mask_logits.device)
    segments_info = []
    if len(probs) == 0:
        return panoptic_seg, segments_info
    owner = (scores[:, None, None] * probs).argmax(0)
    stuff_ids = {}
    for k in range(len(probs)):
        category = int(labels[k])
        is_thing = category in thing_ids
        won = owner == k
        own = probs[k] >= 0.5
        mask = won & own
        won_area, own_area = int(won.sum()), int(own.sum())
        if won_area == 0 or own_area == 0 or not mask.any() or \
                won_area / own_area < overlap_threshold:
            continue
        if not is_thing and category in stuff_ids:
            panoptic_seg[mask] = stuff_ids[category]
            continue
        segment_id = len(segments_info) + 1
        if not is_thing:
            stuff_ids[category] = segment_id
        panoptic_seg[mask] = segment_id
        segments_info.append({"id": segment_id, "isthing": is_thing, "category_id": category})
    return panoptic_seg, segments_info


class MaskFormerInference:
    """Turns one image's predictions into detectron2's output dict.

    Call with mask_cls (Q, K+1) logits, mask_logits (Q, h, w) on the padded input's grid,
    padded_size (Hp, Wp), image_size (hi, wi) of the resized image inside it, output_size (H, W)
    of the original image. Returns a dict with, as enabled: "sem_seg" (K, H, W) class scores,
    "instances" (``Instances`` of at most ``topk`` detections), "panoptic_seg" (ids (H, W),
    segments_info).
    """

    @configurable
    def __init__(self, *, semantic_on=True, instance_on=True, panoptic_on=False, topk=100,
                 object_mask_threshold=0.8, overlap_threshold=0.8, thing_ids=None):
        if not (semantic_on or instance_on or panoptic_on):
            raise ValueError("MODEL.MASK_FORMER.TEST: SEMANTIC_ON, INSTANCE_ON and PANOPTIC_ON are "
                             "all False; enable at least one output.")
        self.semantic_on, self.instance_on, self.panoptic_on = semantic_on, instance_on, panoptic_on
        self.topk = topk
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        # Contiguous ids of "thing" classes; None = every class is a thing.
        self.thing_ids = None if thing_ids is None else set(int(i) for i in thing_ids)

    @classmethod
    def from_config(cls, cfg):
        test = cfg.MODEL.MASK_FORMER.TEST
        thing_ids = None
        if cfg.DATASETS.TEST:
            meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
            mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
            if test.PANOPTIC_ON and mapping is not None and \
                    hasattr(meta, "stuff_dataset_id_to_contiguous_id"):
                thing_ids = list(mapping.values())
        return {"semantic_on": test.SEMANTIC_ON, "instance_on": test.INSTANCE_ON,
                "panoptic_on": test.PANOPTIC_ON, "topk": cfg.TEST.DETECTIONS_PER_IMAGE,
                "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
                "overlap_threshold": test.OVERLAP_THRESHOLD, "thing_ids": thing_ids}

    def __call__(self, mask_cls, mask_logits, padded_size, image_size, output_size,
                 two_pass=False):
        """``two_pass``: resize the mask logits as ``resize_mask_logits(..., two_pass=True)``
        (EoMT's evaluation order) instead of in one pass."""
        mask_cls, mask_logits = mask_cls.float(), mask_logits.float()
        result = {}
        if self.semantic_on or self.panoptic_on:
            full = resize_mask_logits(mask_logits, padded_size, image_size, output_size,
                                      two_pass)
            if self.semantic_on:
                result["sem_seg"] = semantic_inference(mask_cls, full)
            if self.panoptic_on:
                num_classes = mask_cls.shape[-1] - 1
                things = self.thing_ids if self.thing_ids is not None else set(range(num_classes))
                result["panoptic_seg"] = panoptic_inference(
                    mask_cls, full, self.object_mask_threshold, self.overlap_threshold, things)
        if self.instance_on:
            thing_ids = self.thing_ids if self.panoptic_on else None
            scores, classes, queries = select_instances(mask_cls, self.topk, thing_ids)
            if self.semantic_on or self.panoptic_on:
                resize = full.__getitem__
            else:  # resize only the selected queries (often far fewer than Q)
                def resize(idx):
                    return resize_mask_logits(mask_logits[idx], padded_size, image_size,
                                              output_size, two_pass)
            result["instances"] = instance_inference(scores, classes, queries, output_size,
                                                     resize)
        return result
