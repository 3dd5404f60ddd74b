"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former's set matching)."""
import torch
from detectron2.projects.point_rend.point_features import point_sample
from torch import nn
from torch.nn import functional as F

from .mask_ops import FactoredMaskLogits


def pairwise_sigmoid_ce(logits, targets):
    """Mean binary cross-entropy of every prediction against every target.

    logits (Q, P), targets (N, P) in [0, 1] -> (Q, N)."""
    # BCE(x, t) = softplus(x) - x * t: summed over the points, a row sum and one matrix product.
    return (F.softplus(logits).sum(-1)[:, None] - logits @ targets.T) / logits.shape[1]


def pairwise_dice(logits, targets):
    """Dice loss (1 - soft dice, +1 smoothing) of every prediction against every target.

    logits (Q, P), targets (N, P) -> (Q, N)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth segments, per image.

    Cost = cost_class * (-p(class)) + cost_mask * BCE + cost_dice * dice, with BCE and dice
    computed on ``num_points`` random points shared by all pairs of an image (Mask2Former's
    approximation: full-resolution costs for 100 queries x N targets are too costly).
    ``num_points <= 0`` computes them on every pixel of the predicted mask grid instead.
    """

    def __init__(self, cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0; set MODEL.MASK_FORMER."
                             "{CLASS,MASK,DICE}_WEIGHT so that at least one is positive.")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    def cost_matrix(self, pred_logits, pred_masks, labels, masks):
        """The (Q, N) matching cost of one image: pred_logits (Q, K+1), pred_masks (Q, h, w),
        labels (N,), masks (N, H, W). ``pred_masks`` may be a ``FactoredMaskLogits``: its
        logits are then sampled from its factors. Its points are drawn even when N = 0, as
        Mask2Former draws them for every image: the random stream, and so every later draw,
        stays the same."""
        cost_class = -pred_logits.float().softmax(-1)[:, labels]
        if self.num_points > 0:
            device = pred_logits.device
            coords = torch.rand(1, self.num_points, 2, device=device)
            if isinstance(pred_masks, FactoredMaskLogits):
                pred = pred_masks.at_points(coords[0]).float()
            else:
                pred = point_sample(pred_masks[:, None].float(),
                                    coords.expand(len(pred_masks), -1, -1),
                                    align_corners=False)[:, 0]
            masks = masks.to(pred)
            tgt = point_sample(masks[:, None], coords.expand(len(masks), -1, -1),
                               align_corners=False)[:, 0]
        else:
            if isinstance(pred_masks, FactoredMaskLogits):
                pred_masks = pred_masks.dense()
            pred_masks = pred_masks.float()
            masks = masks.to(pred_masks)
            pred = pred_masks.flatten(1)
            tgt = F.interpolate(masks[:, None], size=pred_masks.shape[-2:], mode="bilinear",
                                align_corners=False)[:, 0].flatten(1) if len(masks) else \
                masks.new_zeros(0, pred.shape[1])
        return (self.cost_class * cost_class + self.cost_mask * pairwise_sigmoid_ce(pred, tgt)
                + self.cost_dice * pairwise_dice(pred, tgt))

    @torch.no_grad()
    def forward(self, outputs, targets):
        """outputs: {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, h, w) logits or their
        ``FactoredMaskLogits``};
        targets: B dicts {"labels": (N,) int64, "masks": (N, H, W)}.

        Returns B pairs (query_idx, target_idx) of int64 tensors of length min(Q, N):
        query ``query_idx[i]`` is assigned to target ``target_idx[i]``."""
        from scipy.optimize import linear_sum_assignment  # here: `import d2ext` stays light

        indices = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b],
                                    target["labels"], target["masks"])
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return indices
