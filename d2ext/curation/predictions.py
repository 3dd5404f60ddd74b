"""Run a trained d2ext model over a FiftyOne collection, store its instance masks as
``fo.Detections``, and evaluate them with FiftyOne's COCO-style mask evaluation."""
import logging
import math
import os

from ..data.image_io import read_image_any
from ..engine.predictor import load_predictor
from .fiftyone_db import CurationError, require_fiftyone
from .open_images import GT_FIELD

logger = logging.getLogger(__name__)


def instances_to_detections(instances, classes, image_size):
    """detectron2 ``Instances`` (pred_boxes XYXY pixels, pred_classes, scores, pred_masks
    (N, H, W) bool) -> ``fo.Detections``; each mask is cropped to its box, as FiftyOne stores
    instance masks, and the box is widened to whole pixels so mask and box stay aligned."""
    import fiftyone as fo  # the caller holds a FiftyOne collection, so it is importable
    height, width = image_size
    boxes = instances.pred_boxes.tensor.tolist()
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    detections = []
    for i, (cls, score) in enumerate(zip(instances.pred_classes.tolist(),
                                         instances.scores.tolist())):
        if cls >= len(classes):
            raise CurationError(f"the model predicts class index {cls} but the dataset has only "
                                f"{len(classes)} classes {classes}; use the config and weights "
                                "trained on this dataset's export (MODEL.ROI_HEADS.NUM_CLASSES).")
        x0, y0 = max(0, math.floor(boxes[i][0])), max(0, math.floor(boxes[i][1]))
        x1, y1 = min(width, math.ceil(boxes[i][2])), min(height, math.ceil(boxes[i][3]))
        if x1 <= x0 or y1 <= y0:
            continue
        det = fo.Detection(label=classes[cls], confidence=score,
                           bounding_box=[x0 / width, y0 / height,
                                         (x1 - x0) / width, (y1 - y0) / height])
        if masks is not None:
            det.mask = masks[i, y0:y1, x0:x1]
        detections.append(det)
    return fo.Detections(detections=detections)


def add_predictions(collection, cfg, classes=None, pred_field="predictions",
                    confidence_threshold=0.05, debug=False):
    """Predict every sample of ``collection`` with the d2ext model of ``cfg`` (MODEL.WEIGHTS
    set) and store the results in ``pred_field``. Images missing on disk are skipped. An
    exception while reading or predicting one sample is logged with its file name and the run
    goes on (``debug``: raised instead); a class index the dataset lacks stops the run, since
    every sample would fail the same way.

    ``classes`` name the model's class indices: by default the zero-training models' own class
    names (SAM 3 text prompts, SAM prototypes), else the collection's default_classes.

    Returns:
        {"predicted": N, "instances": I, "missing_images": M, "failed": [filepath, ...]}
    """
    require_fiftyone()
    predictor = load_predictor(cfg)
    classes = list(classes or getattr(predictor.model, "class_names", None)
                   or collection.default_classes or [])
    if not classes:
        raise CurationError(f"dataset {collection.name!r} has no default_classes; pass --classes "
                            "in the model's class order.")
    stats = {"predicted": 0, "instances": 0, "missing_images": 0, "failed": []}
    for sample in collection.iter_samples(autosave=True, progress=True):
        if not os.path.isfile(sample.filepath):
            stats["missing_images"] += 1
            continue
        try:
            image = read_image_any(sample.filepath, "BGR")  # DefaultPredictor's input format
            instances = predictor(image)["instances"].to("cpu")
            instances = instances[instances.scores >= confidence_threshold]
            detections = instances_to_detections(instances, classes, image.shape[:2])
        except CurationError:
            raise
        except Exception as err:  # one sample never ends a run over many
            if debug:
                raise
            message = (str(err).strip().splitlines() or [""])[0]
            logger.error(f"failed {sample.filepath}: {type(err).__name__}: {message}")
            stats["failed"].append(sample.filepath)
            continue
        sample[pred_field] = detections
        stats["predicted"] += 1
        stats["instances"] += len(detections.detections)
    if stats["missing_images"]:
        logger.warning(f"skipped {stats['missing_images']} sample(s) whose image is missing.")
    return stats


def evaluate_predictions(collection, pred_field="predictions", gt_field=GT_FIELD,
                         eval_key="eval", classes=None):
    """FiftyOne's COCO evaluation on instance masks. Returns (results, {"mAP": float,
    "per_class_AP": {class: AP, -1 where the class has no ground truth}})."""
    classes = list(classes or collection.default_classes or [])
    results = collection.evaluate_detections(
        pred_field, gt_field=gt_field, eval_key=eval_key, method="coco", use_masks=True,
        compute_mAP=True, classes=classes or None)
    per_class = {c: float(results.mAP(classes=[c])) for c in classes}
    return results, {"mAP": float(results.mAP()), "per_class_AP": per_class}


def worst_samples(collection, eval_key="eval"):
    """``collection`` sorted by false positives + false negatives of ``eval_key``, worst first."""
    from fiftyone import ViewField as F

    return collection.sort_by(F(f"{eval_key}_fp") + F(f"{eval_key}_fn"), reverse=True)
