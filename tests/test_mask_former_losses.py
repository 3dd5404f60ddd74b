"""HungarianMatcher and SetCriterion (d2ext/modeling/{matcher,criterion}.py)."""
import itertools

import detectron2  # noqa: F401  (the tests require detectron2)
import pytest
import torch
from torch.nn import functional as F

from d2ext.modeling.criterion import SetCriterion
from d2ext.modeling.mask_ops import FactoredMaskLogits
from d2ext.modeling.matcher import HungarianMatcher


def _dense_cost(logits, masks, labels, gt_masks, wc, wm, wd):
    """The matching cost written out pair by pair, for the brute-force check."""
    q, n = len(logits), len(labels)
    cost = torch.zeros(q, n)
    for i in range(q):
        for j in range(n):
            x, t = masks[i].flatten(), gt_masks[j].flatten()
            bce = F.binary_cross_entropy_with_logits(x, t)
            p = x.sigmoid()
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            cost[i, j] = -wc * logits[i].softmax(-1)[labels[j]] + wm * bce + wd * dice
    return cost


@pytest.mark.parametrize("seed", range(6))
def test_matcher_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    q, n, k = 5, int(torch.randint(1, 5, (1,), generator=g)), 3
    logits = torch.randn(1, q, k + 1, generator=g)
    masks = torch.randn(1, q, 6, 7, generator=g) * 3
    labels = torch.randint(0, k, (n,), generator=g)
    gt = (torch.rand(n, 6, 7, generator=g) > 0.5).float()
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=0)
    (rows, cols), = matcher({"pred_logits": logits, "pred_masks": masks},
                            [{"labels": labels, "masks": gt}])
    cost = _dense_cost(logits[0], masks[0], labels, gt, 2.0, 5.0, 5.0)
    best = min(sum(cost[p[j], j] for j in range(n)) for p in itertools.permutations(range(q), n))
    assert len(rows) == len(cols) == n
    assert sorted(cols.tolist()) == list(range(n))
    assert torch.isclose(cost[rows, cols].sum(), torch.as_tensor(best), atol=1e-5)


def test_matcher_handles_images_without_targets():
    matcher = HungarianMatcher(num_points=50)
    out = {"pred_logits": torch.randn(2, 4, 3), "pred_masks": torch.randn(2, 4, 8, 8)}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)},
               {"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 32)}]
    indices = matcher(out, targets)
    assert len(indices[0][0]) == 0 and len(indices[1][0]) == 1


def _criterion(num_classes=3, importance_sample_ratio=0.75):
    return SetCriterion(num_classes, HungarianMatcher(2.0, 5.0, 5.0, num_points=200),
                        eos_coef=0.1, num_points=300,
                        importance_sample_ratio=importance_sample_ratio)


def _perfect_prediction(gt_labels, gt_masks, q, k, strength):
    """Logits that put class gt on the first N queries, "no object" on the rest, and masks of
    +/- strength matching the ground truth."""
    n = len(gt_labels)
    logits = torch.full((1, q, k + 1), -strength)
    logits[0, torch.arange(n), gt_labels] = strength
    logits[0, n:, k] = strength
    masks = torch.full((1, q) + gt_masks.shape[-2:], -strength)
    masks[0, :n] = (gt_masks * 2 - 1) * strength
    return {"pred_logits": logits, "pred_masks": masks}


def test_criterion_near_zero_for_perfect_prediction_and_grows_with_error():
    torch.manual_seed(0)
    gt_masks = torch.zeros(2, 64, 64)
    gt_masks[0, 8:40, 8:40] = 1
    gt_masks[1, 36:60, 20:56] = 1
    targets = [{"labels": torch.tensor([2, 0]), "masks": gt_masks}]
    criterion = _criterion()
    perfect = _perfect_prediction(targets[0]["labels"], gt_masks, q=6, k=3, strength=10.0)
    perfect["aux_outputs"] = [dict(perfect)]
    losses = criterion(perfect, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice",
                           "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    # Not exactly 0: points sampled on a mask border get a fractional label (bilinear sampling).
    chance = sum(criterion({"pred_logits": torch.zeros(1, 6, 4),
                            "pred_masks": torch.zeros(1, 6, 64, 64),
                            "aux_outputs": [{"pred_logits": torch.zeros(1, 6, 4),
                                             "pred_masks": torch.zeros(1, 6, 64, 64)}]},
                           targets).values())
    assert sum(losses.values()) < 0.1 * chance
    previous = sum(losses.values())
    for noise in (4.0, 12.0, 40.0):
        g = torch.Generator().manual_seed(1)
        noisy = {k: perfect[k] + noise * torch.randn(perfect[k].shape, generator=g)
                 for k in ("pred_logits", "pred_masks")}
        noisy["aux_outputs"] = [dict(noisy)]
        torch.manual_seed(0)
        total = sum(criterion(noisy, targets).values())
        assert total > previous
        previous = total


def test_criterion_backpropagates_with_and_without_targets():
    criterion = _criterion()
    logits = torch.randn(2, 5, 4, requires_grad=True)
    masks = torch.randn(2, 5, 16, 16, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 64)},
               {"labels": torch.tensor([1]), "masks": torch.ones(1, 64, 64)}]
    total = sum(criterion({"pred_logits": logits, "pred_masks": masks}, targets).values())
    total.backward()
    assert torch.isfinite(total)
    assert masks.grad[1].abs().sum() > 0 and logits.grad[0].abs().sum() > 0
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 64)}] * 2
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, empty)
    assert losses["loss_mask"] == 0 and losses["loss_ce"] > 0


@pytest.mark.parametrize("counts", [(3, 2), (0, 0)])
def test_factored_masks_give_the_dense_losses_and_gradients(counts):
    """The decoder hands the criterion its mask embeddings and features in training: the losses
    and the gradients of both factors are those of their full product."""
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(2, 7, 8, generator=g, requires_grad=True)
    features = torch.randn(2, 8, 24, 20, generator=g, requires_grad=True)
    logits = torch.randn(2, 7, 4, generator=g)
    targets = []
    for n in counts:
        masks = torch.zeros(n, 96, 80)
        for i in range(n):
            masks[i, 10 * i: 10 * i + 40, 5 * i: 5 * i + 50] = 1
        targets.append({"labels": torch.arange(n) % 3, "masks": masks})
    criterion = _criterion()
    results = []
    for factored in (False, True):
        masks = FactoredMaskLogits(embed, features)
        torch.manual_seed(3)
        losses = criterion({"pred_logits": logits, "pred_masks": masks if factored
                            else masks.dense()}, targets)
        grads = torch.autograd.grad(sum(losses.values()), (embed, features))
        results.append((losses, grads))
    (dense, dense_grads), (factored, factored_grads) = results
    assert sorted(dense) == sorted(factored)
    for key in dense:
        torch.testing.assert_close(factored[key], dense[key], atol=1e-5, rtol=0, msg=key)
    for ours, theirs in zip(factored_grads, dense_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
