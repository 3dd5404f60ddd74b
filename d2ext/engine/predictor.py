"""Single-image inference and drawing, with detectron2's DefaultPredictor and Visualizer."""
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..checkpoint import AtomicCheckpointer
from ..data.dataset_mappers.lsj_augmentation import ResizeShortestEdge


def load_predictor(cfg):
    """``DefaultPredictor`` for ``cfg`` (BGR image in, model outputs out).

    When MODEL.WEIGHTS (the whole model) is set it overwrites the ViT anyway, so the ViT's own
    pretrained weights (MODEL.DINO.WEIGHTS) are not loaded first.
    """
    cfg = cfg.clone()
    cfg.defrost()
    weights, cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS, ""
    if weights:
        cfg.MODEL.DINO.WEIGHTS = ""
    predictor = DefaultPredictor(cfg)
    if weights:  # d2ext's checkpointer: .pkl files are read without running code
        AtomicCheckpointer(predictor.model).load(weights)
    # The same test-time resize, keeping each side of a very thin image at least one pixel.
    predictor.aug = ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    return predictor


def predictor_metadata(cfg):
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


def draw_predictions(image_bgr, outputs, metadata, confidence_threshold=0.5):
    """Draw ``outputs`` (instances, sem_seg or panoptic_seg) on the image; returns RGB uint8."""
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    return draw_outputs(outputs, visualizer.draw_panoptic_seg,
                        visualizer.draw_instance_predictions, visualizer.draw_sem_seg,
                        confidence_threshold).get_image()
