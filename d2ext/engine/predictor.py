"""Single-image inference and drawing, with detectron2's DefaultPredictor and Visualizer."""
import logging

import cv2
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..checkpoint import (
    AtomicCheckpointer,
    checkpoint_class_names,
    class_names_difference,
    dataset_class_names,
    show_names,
)
from ..data.dataset_mappers.lsj_augmentation import ResizeShortestEdge
from ..data.datasets.sem_seg_folders import stable_colors
from ..modeling.meta_arch import capabilities
from ..modeling.meta_arch.capabilities import compile_configured

logger = logging.getLogger(__name__)


def load_predictor(cfg, compile=True):
    """``DefaultPredictor`` for ``cfg`` (BGR image in, model outputs out).

    When MODEL.WEIGHTS (the whole model) is set it overwrites the ViT anyway, so the ViT's own
    pretrained weights (MODEL.DINO.WEIGHTS) are not loaded first. The checkpoint must fit the
    model exactly (``AtomicCheckpointer`` with ``strict``): ``CheckpointError`` otherwise.

    The predictor's ``class_names`` name the model's class indices as it was trained: the
    checkpoint's "classes", or a zero-training model's own names; None where only the config's
    dataset names them (a checkpoint saved before d2ext recorded its classes). Its
    ``metadata`` is the Metadata to draw with (``predictor_metadata``): that of the config's
    dataset, unless the checkpoint names other classes (then its names, with a warning).

    With MODEL.COMPILE (and ``compile``) the model's network is compiled (``torch.compile``;
    the pre- and post-processing stay eager); ``compile=False`` keeps it eager whatever the
    config says (an exporter traces the model itself).
    """
    cfg = cfg.clone()
    cfg.defrost()
    weights, cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS, ""
    if weights:
        cfg.MODEL.DINO.WEIGHTS = ""
    predictor = DefaultPredictor(cfg)
    classes = None
    if weights:  # d2ext's checkpointer: .pkl files are read without running code
        classes = AtomicCheckpointer(predictor.model, strict=True, cfg=cfg).load(
            weights).get("classes")
    # The same test-time resize, keeping each side of a very thin image at least one pixel.
    predictor.aug = ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    if capabilities(cfg).classes_from_model:  # zero-training models name their classes
        predictor.class_names = list(predictor.model.class_names)
        predictor.metadata = Metadata(name="d2ext_model_classes",
                                      thing_classes=predictor.class_names)
    else:
        predictor.class_names = checkpoint_class_names(classes, cfg)
        predictor.metadata = _trained_metadata(cfg, predictor.class_names, classes, weights)
    if compile:
        compile_configured(cfg, predictor.model)
    return predictor


def _trained_metadata(cfg, trained, classes, weights):
    """The config's dataset metadata, or one naming the checkpoint's classes ``trained`` where
    they differ from that dataset's (with a warning)."""
    metadata = predictor_metadata(cfg)
    if trained is None:
        return metadata
    names = dataset_class_names(cfg, metadata.name)
    if names == trained:
        return metadata
    field = capabilities(cfg).class_metadata
    if names is not None:
        logger.warning(f"MODEL.WEIGHTS {weights} was trained on {classes.get('dataset')!r} with "
                       f"classes {show_names(trained)}, but the config's dataset "
                       f"{metadata.name!r} names {show_names(names)} "
                       f"({class_names_difference(trained, names)}): predictions are named with "
                       "the checkpoint's classes.")
    # Panoptic drawing names stuff segments too: detectron2's panoptic metadata lists every
    # class in both fields, so the checkpoint's names serve for both.
    names = {"thing_classes": trained, "stuff_classes": trained,
             "stuff_colors": stable_colors(len(trained))}
    if field == "stuff_classes":
        del names["thing_classes"]
    return Metadata(name=f"{classes.get('dataset')} (from {weights})", **names)


def predictor_metadata(cfg, predictor=None):
    """The Metadata to draw ``predictor``'s outputs with (``predictor.metadata``, which names
    the classes as the checkpoint does); without a predictor, that of the config's first test
    (else train) dataset."""
    if predictor is not None:
        return predictor.metadata
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0] if names else "__unused")


def draw_outputs(outputs, draw_panoptic, draw_instances, draw_sem_seg, confidence_threshold=0.5):
    """Draw ``outputs`` with the one of three drawing functions that fits them (panoptic
    segments, instances scoring at least ``confidence_threshold``, or the semantic argmax), as
    detectron2's Visualizer and VideoVisualizer name them; returns the drawing's VisImage."""
    if "panoptic_seg" in outputs:
        panoptic, segments = outputs["panoptic_seg"]
        return draw_panoptic(panoptic.to("cpu"), segments)
    if "instances" in outputs:
        instances = outputs["instances"].to("cpu")
        if instances.has("scores"):
            instances = instances[instances.scores >= confidence_threshold]
        return draw_instances(instances)
    if "sem_seg" in outputs:
        return draw_sem_seg(outputs["sem_seg"].argmax(dim=0).to("cpu"))
    raise ValueError(f"nothing to draw in the model's outputs (keys: {sorted(outputs)})")


# The longest side a drawing gets. Matplotlib's canvas and the Visualizer's per-mask work grow
# with the pixel count (an 8000x6000 photo took gigabytes); above this, image and predictions
# are resampled to it before drawing.
MAX_DRAW_SIDE = 4096


def _nearest_indices(size, new_size):
    """Source rows (or columns) a nearest-neighbour resample from ``size`` to ``new_size`` reads:
    the centre of each output pixel, as cv2.INTER_NEAREST_EXACT and PIL's NEAREST sample."""
    return ((torch.arange(new_size) + 0.5) * (size / new_size)).long().clamp_(max=size - 1)


def downscale_outputs(outputs, image_size, new_size, confidence_threshold=0.5):
    """``outputs`` resampled from ``image_size`` to ``new_size`` (H, W) for drawing: instances
    below ``confidence_threshold`` are dropped first, masks and label maps are sampled nearest,
    boxes scaled, a semantic map reduced to its argmax (what is drawn)."""
    (h, w), (nh, nw) = image_size, new_size
    rows, cols = _nearest_indices(h, nh), _nearest_indices(w, nw)
    if "panoptic_seg" in outputs:
        panoptic, segments = outputs["panoptic_seg"]
        return {"panoptic_seg": (panoptic.to("cpu")[rows[:, None], cols], segments)}
    if "instances" in outputs:
        instances = outputs["instances"].to("cpu")
        if instances.has("scores"):
            instances = instances[instances.scores >= confidence_threshold]
        fields = instances.get_fields()
        small = Instances((nh, nw))
        for name, value in fields.items():
            if name == "pred_masks":
                value = value[:, rows[:, None], cols]
            elif name == "pred_boxes":
                value = value.clone()
                value.scale(nw / w, nh / h)
            small.set(name, value)
        return {"instances": small}
    labels = outputs["sem_seg"].argmax(dim=0).to("cpu")[rows[:, None], cols]
    return {"sem_seg_labels": labels}


def draw_predictions(image_bgr, outputs, metadata, confidence_threshold=0.5,
                     max_side=MAX_DRAW_SIDE):
    """Draw ``outputs`` (instances, sem_seg or panoptic_seg) on the image; returns RGB uint8.
    An image whose longer side exceeds ``max_side`` is drawn at that size (its aspect kept)."""
    h, w = image_bgr.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        new_size = (max(1, round(h * scale)), max(1, round(w * scale)))
        outputs = downscale_outputs(outputs, (h, w), new_size, confidence_threshold)
        image_bgr = cv2.resize(image_bgr, new_size[::-1], interpolation=cv2.INTER_AREA)
        logger.info(f"drawn at {new_size[1]}x{new_size[0]} (the image is {w}x{h})")
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    if "sem_seg_labels" in outputs:
        return visualizer.draw_sem_seg(outputs["sem_seg_labels"]).get_image()
    return draw_outputs(outputs, visualizer.draw_panoptic_seg,
                        visualizer.draw_instance_predictions, visualizer.draw_sem_seg,
                        confidence_threshold).get_image()
