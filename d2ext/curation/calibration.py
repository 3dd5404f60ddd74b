"""Verified auto-labelling: calibrate per-class confidence thresholds of pre-labels on the
samples a user reviewed, then keep only the pre-labels above them on the rest.

:func:`calibrate_thresholds` matches the pre-labels of the reviewed samples to the reviewed
labels with FiftyOne's COCO-style mask evaluation (``evaluate_detections(method="coco",
use_masks=True)``: greedy matching by score at one IoU, per class), then sweeps the threshold
over the pre-labels' confidences: at threshold t the kept pre-labels are those scoring at least
t, precision = matched kept / kept, recall = matched kept / reviewed labels. The threshold of a
class is the lowest t whose precision reaches the target; a class where none does gets no
threshold (its pre-labels are never kept).
"""
import json
import logging
import os

from .fiftyone_db import CurationError, require_fiftyone
from .predictions import _dataset_of

logger = logging.getLogger(__name__)

EVAL_KEY = "d2ext_calibrate"


def precision_recall_sweep(scored, num_truth):
    """[(threshold, precision, recall)] for each distinct confidence of ``scored`` (pairs of
    (confidence, matched)), highest threshold first; ``num_truth`` reviewed labels."""
    rows, kept, matched = [], 0, 0
    ordered = sorted(scored, key=lambda p: -p[0])
    for i, (confidence, hit) in enumerate(ordered):
        kept += 1
        matched += bool(hit)
        if i + 1 < len(ordered) and ordered[i + 1][0] == confidence:
            continue  # a threshold keeps every pre-label of its confidence
        rows.append((float(confidence), matched / kept, matched / num_truth if num_truth else 0.0))
    return rows


def pick_threshold(rows, target_precision):
    """The lowest threshold of ``rows`` whose precision reaches ``target_precision``, or None."""
    meeting = [t for t, p, _ in rows if p >= target_precision - 1e-12]
    return min(meeting) if meeting else None


def calibrate_thresholds(collection, pred_field, gt_field, target_precision=0.9, iou=0.5,
                         classes=None):
    """Per-class thresholds of ``pred_field``'s confidences against ``gt_field`` on
    ``collection`` (the reviewed samples). Returns {"target_precision", "iou", "pred_field",
    "gt_field", "num_samples", "mAP", "classes": {name: {"threshold" (None: never keep),
    "precision", "recall", "AP", "num_truth", "num_predicted", "curve": [[t, p, r], ...]}}}."""
    require_fiftyone()
    if len(collection) == 0:
        raise CurationError("no reviewed samples to calibrate on; tag the samples you reviewed "
                            "(--tags) or check the dataset name.")
    for field in (pred_field, gt_field):
        if not collection.has_field(field):
            raise CurationError(f"dataset {collection.name!r} has no label field {field!r} "
                                f"(fields: {sorted(collection.get_field_schema())}).")
    dataset = _dataset_of(collection)
    if EVAL_KEY in dataset.list_evaluations():
        dataset.delete_evaluation(EVAL_KEY)
    results = collection.evaluate_detections(
        pred_field, gt_field=gt_field, eval_key=EVAL_KEY, method="coco", iou=iou,
        use_masks=True, compute_mAP=True, classwise=True)
    labels, confidences, outcomes = collection.values(
        [f"{pred_field}.detections.label", f"{pred_field}.detections.confidence",
         f"{pred_field}.detections.{EVAL_KEY}"], unwind=True)
    truth = collection.count_values(f"{gt_field}.detections.label")
    names = list(classes or sorted(set(labels) | set(truth)))
    per_class = {}
    for name in names:
        scored = [(c if c is not None else 1.0, o == "tp")
                  for lb, c, o in zip(labels, confidences, outcomes) if lb == name]
        rows = precision_recall_sweep(scored, truth.get(name, 0))
        threshold = pick_threshold(rows, target_precision)
        at = next((r for r in rows if r[0] == threshold), (None, None, None))
        ap = float(results.mAP(classes=[name])) if truth.get(name) else -1.0
        per_class[name] = {"threshold": threshold, "precision": at[1], "recall": at[2],
                           "AP": ap, "num_truth": int(truth.get(name, 0)),
                           "num_predicted": len(scored), "curve": [list(r) for r in rows]}
    dataset.delete_evaluation(EVAL_KEY)  # the per-label marks were only needed here
    return {"target_precision": target_precision, "iou": iou, "pred_field": pred_field,
            "gt_field": gt_field, "num_samples": len(collection), "mAP": float(results.mAP()),
            "classes": per_class}


def plot_precision_recall(calibration, path):
    """A precision-recall curve per class (PNG at ``path``), the chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5))
    for name, info in calibration["classes"].items():
        if not info["curve"]:
            continue
        _, precision, recall = zip(*info["curve"])
        line, = axes.plot(recall, precision, marker=".", label=name)
        if info["threshold"] is not None:
            axes.plot([info["recall"]], [info["precision"]], "o", markersize=10,
                      markerfacecolor="none", color=line.get_color())
            axes.annotate(f"{info['threshold']:.2f}", (info["recall"], info["precision"]),
                          textcoords="offset points", xytext=(6, -12), fontsize=8)
    axes.axhline(calibration["target_precision"], color="grey", linestyle="--", linewidth=1)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
             title=f"{calibration['pred_field']} vs {calibration['gt_field']} "
                   f"(mask IoU {calibration['iou']}); circles: chosen thresholds")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def save_thresholds(calibration, path, review_tags):
    """Write ``calibration`` with the review tags to ``path`` (JSON) for ``export
    --thresholds``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = {**calibration, "review_tags": list(review_tags),
            "thresholds": {n: c["threshold"] for n, c in calibration["classes"].items()}}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path


def load_thresholds(path):
    """The thresholds file of :func:`save_thresholds`; ``CurationError`` when it is not."""
    try:
        with open(path) as f:
            data = json.load(f)
        data["thresholds"], data["pred_field"], data["gt_field"], data["review_tags"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CurationError(f"--thresholds {path}: not a thresholds file of `curate_fiftyone.py "
                            f"calibrate` ({type(err).__name__}: {err}); run calibrate first."
                            ) from None
    return data


def keep_calibrated(detections, thresholds):
    """The pre-labels of ``detections`` that a class threshold keeps (confidence at least the
    class's threshold; a class without one keeps none); labels without a confidence were made
    by a person and are kept."""
    kept = []
    for det in detections:
        if det.confidence is None:
            kept.append(det)
            continue
        threshold = thresholds.get(det.label)
        if threshold is not None and det.confidence >= threshold:
            kept.append(det)
    return kept
