"""Run a trained d2ext model over a FiftyOne collection, store its instance masks as
``fo.Detections``, and evaluate them with FiftyOne's COCO-style mask evaluation."""
import json
import logging
import math
import os

from ..data.image_io import read_image_any
from ..engine.predictor import load_predictor
from ..modeling.meta_arch import capabilities
from .fiftyone_db import CurationError, require_fiftyone
from .open_images import GT_FIELD

logger = logging.getLogger(__name__)


def _relative(pixel, size, start=0.0):
    """``pixel / size - start``, nudged by ulps until ``int(size * (start + result)) == pixel``:
    FiftyOne maps a relative box corner to a pixel by flooring ``size * corner``, and
    ``pixel / size * size`` can land an ulp below ``pixel``."""
    offset = pixel / size - start
    for _ in range(4096):  # a few ulps in practice; the bound only guards the loop
        floor = int(size * (start + offset))
        if floor == pixel:
            break
        offset = math.nextafter(offset, math.inf if floor < pixel else -math.inf)
    return offset


def pixel_box(x0, y0, x1, y1, width, height):
    """The FiftyOne box ``[x, y, w, h]`` (relative) of the whole-pixel box ``x0 <= x < x1``,
    ``y0 <= y < y1``, such that FiftyOne's own rendering (``to_segmentation``, mask
    evaluation, the App) places a mask cropped to it at exactly those pixels: an off-by-one
    corner would shift the mask, or resample it to the box's size."""
    x, y = _relative(x0, width), _relative(y0, height)
    return [x, y, _relative(x1, width, x), _relative(y1, height, y)]


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
                           bounding_box=pixel_box(x0, y0, x1, y1, width, height))
        if masks is not None:
            det.mask = masks[i, y0:y1, x0:x1]
        detections.append(det)
    return fo.Detections(detections=detections)


# A label field's info records the d2ext command that created it: that command may rewrite the
# field; labels anyone else put in a field (imported, drawn in the App) are never replaced
# unless asked (overwrite).
WRITER_KEY = "d2ext_written_by"
FIELD_FLAGS = {"prelabel": "--label-field", "predict": "--pred-field"}


def _dataset_of(collection):
    """The dataset behind ``collection`` (a dataset, or a view of one)."""
    import fiftyone as fo

    name = getattr(collection, "dataset_name", None)  # views only
    return fo.load_dataset(name) if name else collection


def field_writer(dataset, field):
    """The d2ext command (``"prelabel"``, ``"predict"``) that created label field ``field`` of
    ``dataset``, else None (a field d2ext did not create, or no such field)."""
    if not dataset.has_sample_field(field):
        return None
    return (dataset.get_field(field).info or {}).get(WRITER_KEY)


def check_label_field(collection, field, writer="predict", overwrite=False):
    """Refuse (:class:`CurationError`) to let ``writer`` write label field ``field`` of
    ``collection``'s dataset where samples hold labels that ``writer`` did not write, unless
    ``overwrite``; and a field of that name that is not a Detections field. Returns the ids of
    the samples holding such labels (empty unless ``overwrite``)."""
    import fiftyone as fo

    dataset = _dataset_of(collection)
    flag = FIELD_FLAGS.get(writer, "the label field")
    if not dataset.has_sample_field(field):
        return set()
    existing = dataset.get_field(field)
    if not (isinstance(existing, fo.EmbeddedDocumentField)
            and issubclass(existing.document_type, fo.Detections)):
        kind = getattr(existing, "document_type", type(existing)).__name__
        raise CurationError(f"{flag} {field!r}: dataset {dataset.name!r} already has a {kind} "
                            f"field of that name, not a Detections label field; choose another "
                            f"{flag}.")
    owner = field_writer(dataset, field)
    if owner == writer:
        return set()
    held = set(dataset.exists(field).values("id"))
    if held and not overwrite:
        whose = f"written by d2ext {owner}" if owner else f"that {writer} did not write"
        raise CurationError(f"{flag} {field!r}: {len(held)} sample(s) of dataset "
                            f"{dataset.name!r} hold labels there {whose}; choose another "
                            f"{flag}, or pass --overwrite to replace them.")
    return held


def _claim_field(dataset, field, writer):
    """Record in ``field``'s info (and its description, if empty) that ``writer`` wrote it."""
    import fiftyone as fo

    if not dataset.has_sample_field(field):
        dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    existing = dataset.get_field(field)
    existing.info = {**(existing.info or {}), WRITER_KEY: writer}
    existing.description = existing.description or \
        f"d2ext {writer}: model predictions (rerunning {writer} replaces them)"
    existing.save()


def add_predictions(collection, cfg, classes=None, pred_field="predictions",
                    confidence_threshold=0.05, debug=False, overwrite=False, writer="predict"):
    """Predict every sample of ``collection`` with the d2ext model of ``cfg`` (MODEL.WEIGHTS
    set) and store the results in ``pred_field``. Images missing on disk are skipped. An
    exception while reading or predicting one sample is logged with its file name and the run
    goes on (``debug``: raised instead); a class index the dataset lacks stops the run, since
    every sample would fail the same way.

    ``classes`` name the model's class indices: by default the zero-training models' own class
    names (SAM 3 text prompts, SAM prototypes) or those the checkpoint was trained with (its
    "classes"), else the collection's default_classes.

    ``writer`` (the d2ext command, ``"predict"`` or ``"prelabel"``) is recorded in the field's
    info when it creates the field; it rewrites such a field freely, but a field holding labels
    it did not write is refused before the model is built, unless ``overwrite`` (see
    :func:`check_label_field`).

    Returns:
        {"predicted": N, "instances": I, "missing_images": M, "failed": [filepath, ...]}
    """
    require_fiftyone()
    foreign = check_label_field(collection, pred_field, writer, overwrite)
    predictor = load_predictor(cfg)
    # the model's own names (zero-training models), else those its checkpoint was trained with
    own = (predictor.model.class_names if capabilities(cfg).classes_from_model
           else predictor.class_names)
    classes = list(classes or own or collection.default_classes or [])
    if not classes:
        raise CurationError(f"dataset {collection.name!r} has no default_classes; pass --classes "
                            "in the model's class order.")
    dataset = _dataset_of(collection)
    if not foreign and field_writer(dataset, pred_field) != writer:
        # created (or still empty): marked before the first write, so an interrupted run
        # leaves a field that a rerun may replace
        _claim_field(dataset, pred_field, writer)
    stats = {"predicted": 0, "instances": 0, "missing_images": 0, "failed": []}
    written = set()
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
        written.add(sample.id)
        stats["predicted"] += 1
        stats["instances"] += len(detections.detections)
    if foreign and not foreign - written:  # --overwrite replaced every label of others
        _claim_field(dataset, pred_field, writer)
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


def _coco_instances(anns, index_of, height, width, confidence_threshold):
    """detectron2 ``Instances`` of a predictions json's annotations of one image (RLE masks
    decoded at its size, xywh boxes), those scoring at least ``confidence_threshold``."""
    import numpy as np
    import pycocotools.mask as mask_util
    import torch
    from detectron2.structures import Boxes, Instances

    anns = [a for a in anns if a.get("score", 1.0) >= confidence_threshold]
    masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in anns
             if "segmentation" in a]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    fields = dict(pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)),
                  pred_classes=torch.tensor([index_of[a["category_id"]] for a in anns],
                                            dtype=torch.long),
                  scores=torch.tensor([float(a.get("score", 1.0)) for a in anns]))
    if len(masks) == len(anns) and anns:
        fields["pred_masks"] = torch.from_numpy(np.stack(masks))
    return Instances((height, width), **fields)


def _sample_matcher(images, image_root):
    """A function from a sample's filepath to its entry of a predictions json's ``images``:
    the file under ``image_root`` (the predicted folder) or an absolute file name, else the
    longest trailing part of the path that is a relative file name of the json."""
    by_name = {image["file_name"].replace("\\", "/"): image for image in images}
    by_path = {}
    for name, image in by_name.items():
        path = name if os.path.isabs(name) else os.path.join(image_root or "", name)
        by_path[os.path.normpath(os.path.abspath(path))] = image

    def match(filepath):
        found = by_path.get(os.path.normpath(os.path.abspath(filepath)))
        if found is not None:
            return found
        parts = os.path.normpath(filepath).replace("\\", "/").split("/")
        for i in range(1, len(parts)):
            found = by_name.get("/".join(parts[i:]))
            if found is not None:
                return found
        return None

    return match


def add_predictions_from_coco(collection, json_file, pred_field="prelabels",
                              confidence_threshold=0.0, overwrite=False, writer="prelabel",
                              image_root=None):
    """Store the predictions of a COCO json (``tools/predict.py``'s OUT/predictions.json, or
    any COCO results with ``score``) in label field ``pred_field`` of ``collection``'s samples,
    as :func:`add_predictions` stores a model's (the same Detections, the same refusal of a
    field holding labels ``writer`` did not write unless ``overwrite``).

    Samples are matched by file path: the json's file names under ``image_root`` (default: the
    ``info.image_root`` predict records, else the json's folder) or absolute, else by the
    longest trailing part of the sample's path that the json names. Classes are the json's
    categories; the dataset's default_classes are set to them where it has none.

    Returns:
        {"predicted": N, "instances": I, "unmatched_samples": S, "unused_images": U}
    """
    require_fiftyone()
    try:
        with open(json_file) as f:
            coco = json.load(f)
        images, categories = coco["images"], coco["categories"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CurationError(f"--from-predictions {json_file}: not a readable COCO json "
                            f"({type(err).__name__}: {err}); give predict's "
                            "OUT/predictions.json.") from None
    foreign = check_label_field(collection, pred_field, writer, overwrite)
    classes = [c["name"] for c in categories]
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    root = image_root or (coco.get("info") or {}).get("image_root") or \
        os.path.dirname(os.path.abspath(json_file))
    anns_of = {}
    for ann in coco.get("annotations", []):
        anns_of.setdefault(ann["image_id"], []).append(ann)
    match = _sample_matcher(images, root)
    dataset = _dataset_of(collection)
    if not foreign and field_writer(dataset, pred_field) != writer:
        _claim_field(dataset, pred_field, writer)
    if not dataset.default_classes:
        dataset.default_classes = classes
        dataset.save()
    stats = {"predicted": 0, "instances": 0, "unmatched_samples": 0, "unused_images": 0}
    written, used = set(), set()
    for sample in collection.iter_samples(autosave=True, progress=True):
        image = match(sample.filepath)
        if image is None:
            stats["unmatched_samples"] += 1
            continue
        instances = _coco_instances(anns_of.get(image["id"], []), index_of, image["height"],
                                    image["width"], confidence_threshold)
        detections = instances_to_detections(instances, classes,
                                             (image["height"], image["width"]))
        sample[pred_field] = detections
        written.add(sample.id)
        used.add(image["id"])
        stats["predicted"] += 1
        stats["instances"] += len(detections.detections)
    stats["unused_images"] = len(images) - len(used)
    if foreign and not foreign - written:  # --overwrite replaced every label of others
        _claim_field(dataset, pred_field, writer)
    if stats["unmatched_samples"]:
        logger.warning(f"{stats['unmatched_samples']} sample(s) have no image in {json_file}.")
    return stats
