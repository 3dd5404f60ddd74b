"""Mask2Former's set-prediction losses: class cross-entropy and point-sampled mask BCE + dice."""
import contextlib
import contextvars
from dataclasses import dataclass

import torch
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils.comm import get_world_size
from torch import nn
from torch.nn import functional as F

from .mask_ops import FactoredMaskLogits
from .matcher import HungarianMatcher


def dice_loss(logits, targets, num_masks):
    """Sum over masks of 1 - soft dice; logits, targets (M, P) -> scalar / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits, targets, num_masks):
    """Sum over masks of the mean per-point BCE; logits, targets (M, P) -> scalar / num_masks."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


@dataclass(frozen=True)
class StepTargets:
    """The targets of one whole optimizer step, which the losses of each of its micro-batches
    are normalised by when gradient accumulation splits it (d2ext/engine/accumulation.py).

    num_masks: Mask2Former's mask-loss normaliser: the step's target masks over all processes
        divided by the number of processes, at least 1.
    masks_per_image: the target count of each of this process's images of the step, every
        micro-batch included (the class cross-entropy's normaliser is this process's).
    """

    num_masks: float
    masks_per_image: tuple

    @classmethod
    def gather(cls, masks_per_image, device):
        """From this process's per-image target counts; all-reduces the mask count over the
        processes (a collective: every process calls it once per step)."""
        num_masks = torch.tensor([float(sum(masks_per_image))], device=device)
        if get_world_size() > 1:
            torch.distributed.all_reduce(num_masks)
        return cls(max(num_masks.item() / get_world_size(), 1.0), tuple(masks_per_image))

    def class_weight_total(self, num_queries, no_object_weight):
        """The sum of the class cross-entropy's weights over every query of this process's
        images of the step: per image the matcher pairs min(N, Q) queries with targets (weight
        1), the rest are "no object" (``no_object_weight``)."""
        return sum(min(n, num_queries) + (num_queries - min(n, num_queries)) * no_object_weight
                   for n in self.masks_per_image)


_STEP_TARGETS = contextvars.ContextVar("d2ext_step_targets", default=None)


@contextlib.contextmanager
def step_targets(targets):
    """Within it, ``SetCriterion`` normalises by ``targets`` (a ``StepTargets``), the whole
    optimizer step's, instead of the batch it is given: the losses of micro-batches then add up
    to the whole step's loss."""
    token = _STEP_TARGETS.set(targets)
    try:
        yield
    finally:
        _STEP_TARGETS.reset(token)


class SetCriterion(nn.Module):
    """Losses of a set of (class, mask) predictions after Hungarian matching.

    Inputs: outputs {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, h, w) logits or their
    ``FactoredMaskLogits`` (then only the matched queries' full maps are computed),
    optional "aux_outputs": [dicts of the same two keys, one per intermediate decoder layer]};
    targets: B dicts {"labels": (N,) int64 in [0, K), "masks": (N, H, W)} (masks at any
    resolution: they are point-sampled in normalised coordinates).

    Returns the weighted losses {"loss_ce", "loss_mask", "loss_dice"} plus ``_i`` suffixed ones for
    aux output i (deep supervision). Class K is "no object" and weighs ``eos_coef`` in the CE.
    Mask losses use ``num_points`` points per mask, chosen by PointRend's importance sampling:
    ``importance_sample_ratio`` of them where the prediction is most uncertain among
    ``oversample_ratio * num_points`` random candidates, the rest uniformly at random.

    Normalisation (Mask2Former's): the mask losses by the batch's target masks over all
    processes / the process count; the class cross-entropy is the weighted mean over the
    process's queries. Inside ``step_targets`` both normalisers are the whole optimizer step's
    instead (the CE as a weighted sum over the micro-batch divided by the step's weight total),
    so that micro-batches accumulate the one big batch's gradients.
    """

    def __init__(self, num_classes, matcher, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                 eos_coef=0.1, num_points=12544, oversample_ratio=3.0,
                 importance_sample_ratio=0.75):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight,
                        "loss_dice": dice_weight}
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def loss_labels(self, pred_logits, targets, indices):
        target_classes = torch.full(pred_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=pred_logits.device)
        for b, (query_idx, target_idx) in enumerate(indices):
            target_classes[b, query_idx.to(pred_logits.device)] = \
                targets[b]["labels"][target_idx.to(targets[b]["labels"].device)].to(
                    pred_logits.device)
        logits = pred_logits.float().transpose(1, 2)
        step = _STEP_TARGETS.get()
        if step is None:  # the batch is the whole step: the weighted mean over its queries
            return F.cross_entropy(logits, target_classes, self.empty_weight)
        total = step.class_weight_total(pred_logits.shape[1], self.eos_coef)
        return F.cross_entropy(logits, target_classes, self.empty_weight, reduction="sum") / total

    def loss_masks(self, pred_masks, targets, indices, num_masks):
        if isinstance(pred_masks, FactoredMaskLogits):  # the matched queries' maps only
            src = torch.cat([pred_masks[b].rows(q.to(pred_masks.embed.device))
                             for b, (q, _) in enumerate(indices)])
        else:
            src = torch.cat([pred_masks[b, q] for b, (q, _) in enumerate(indices)])
        tgt = torch.cat([targets[b]["masks"][t] for b, (_, t) in enumerate(indices)])
        if len(src) == 0:  # no ground truth in the batch: keep the graph, add nothing
            factors = (pred_masks.embed, pred_masks.features) \
                if isinstance(pred_masks, FactoredMaskLogits) else (pred_masks,)
            zero = sum(f.sum() for f in factors) * 0.0
            return zero, zero
        src = src[:, None].float()
        tgt = tgt[:, None].to(src)
        with torch.no_grad():
            # Uncertainty = -|logit|: points near the decision boundary matter most.
            coords = get_uncertain_point_coords_with_randomness(
                src, lambda logits: -logits.abs(), self.num_points, self.oversample_ratio,
                self.importance_sample_ratio)
            point_labels = point_sample(tgt, coords, align_corners=False)[:, 0]
        point_logits = point_sample(src, coords, align_corners=False)[:, 0]
        return (sigmoid_ce_loss(point_logits, point_labels, num_masks),
                dice_loss(point_logits, point_labels, num_masks))

    def _losses(self, outputs, targets, num_masks):
        indices = self.matcher(outputs, targets)
        loss_mask, loss_dice = self.loss_masks(outputs["pred_masks"], targets, indices, num_masks)
        losses = {"loss_ce": self.loss_labels(outputs["pred_logits"], targets, indices),
                  "loss_mask": loss_mask, "loss_dice": loss_dice}
        return {k: v * self.weights[k] for k, v in losses.items()}

    def forward(self, outputs, targets):
        # Normalise by the number of ground-truth masks over all processes (Mask2Former's
        # choice): of the whole optimizer step where gradient accumulation splits it.
        step = _STEP_TARGETS.get() or StepTargets.gather(
            [len(t["labels"]) for t in targets], outputs["pred_logits"].device)
        num_masks = step.num_masks
        losses = self._losses(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets,
                                                                   num_masks).items()})
        return losses


def build_set_criterion(cfg):
    """The SetCriterion (with its HungarianMatcher) of MODEL.MASK_FORMER's loss keys and
    MODEL.SEM_SEG_HEAD.NUM_CLASSES, for the Mask2Former-style and EoMT heads alike."""
    mf = cfg.MODEL.MASK_FORMER
    matcher = HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT,
                               num_points=mf.TRAIN_NUM_POINTS)
    return SetCriterion(
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, matcher, class_weight=mf.CLASS_WEIGHT,
        mask_weight=mf.MASK_WEIGHT, dice_weight=mf.DICE_WEIGHT, eos_coef=mf.NO_OBJECT_WEIGHT,
        num_points=mf.TRAIN_NUM_POINTS, oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO)
