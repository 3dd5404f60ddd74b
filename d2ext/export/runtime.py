"""Run what ``d2ext.export.exporter`` wrote (ONNX Runtime or the ``torch.export`` program) and
get the detectron2 outputs the eager model gives: the graph's raw outputs go through the eager
meta-architecture's own post-processing functions.

    model = ExportedModel("out/eomt")           # called like the eager model in eval mode
    outputs = model([{"image": image_chw, "height": H, "width": W}])
    predictor = ExportedPredictor("out/eomt")   # detectron2's DefaultPredictor
    outputs = predictor(cv2.imread("photo.jpg"))  # {"instances": Instances} at the photo's size
"""
import json
import os

import torch
import torch.nn.functional as F
from detectron2.engine import DefaultPredictor
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..data.dataset_mappers.lsj_augmentation import ResizeShortestEdge
from ..engine.defaults import setup_cfg
from ..modeling.meta_arch.dino_semantic_segmentor import resample_logits
from ..modeling.postprocessing import MaskFormerInference
from .exporter import CONFIG_FILE, MASK_CLASSIFICATION, SPEC_FILE


def load_graph(export_dir, spec, providers=None, session_options=None):
    """The graph of ``export_dir`` as a function: the spec's input tensors -> its output
    tensors (a list, on the CPU for ONNX Runtime). ``providers``: ONNX Runtime's execution
    providers (default: the CPU's); ``session_options``: its ``SessionOptions`` (default:
    ONNX Runtime's)."""
    path = os.path.join(export_dir, spec["file"])
    if spec["format"] == "torch_export":
        program = torch.export.load(path).module()

        def run_program(*inputs):
            with torch.no_grad():
                outputs = program(*inputs)
            return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]

        return run_program
    import onnxruntime

    session = onnxruntime.InferenceSession(path, session_options,
                                           providers=providers or ["CPUExecutionProvider"])

    def run_session(*inputs):
        feeds = {name: x.cpu().numpy() for name, x in zip(spec["inputs"], inputs)}
        return [torch.from_numpy(y) for y in session.run(spec["outputs"], feeds)]

    return run_session


class ExportedModel:
    """An export, called like its eager meta-architecture in eval mode: detectron2's list of
    dicts with "image" (3, h, w) in INPUT.FORMAT (already resized, as a dataset mapper gives it)
    and optional "height"/"width" -> per image the eager model's output dict ("instances",
    "sem_seg", "panoptic_seg" as configured), so detectron2's ``inference_on_dataset`` and
    evaluators take it unchanged. Images run one at a time.

    Each image is normalised and zero-padded as the eager model does it, to the padding
    multiple for a dynamic export (and to two multiples at least: a graph's side of one
    multiple would be fixed). A fixed-size export pads every image to its size instead,
    which is more padding than the eager model adds to a smaller image (the ViT then sees extra
    zero tokens), and refuses a larger image.
    """

    def __init__(self, export_dir, providers=None, session_options=None):
        spec_path = os.path.join(export_dir, SPEC_FILE)
        if not os.path.isfile(spec_path):
            raise FileNotFoundError(f"{export_dir}: no {SPEC_FILE} there; write the folder with "
                                    "tools/export_model.py.")
        with open(spec_path) as f:
            self.spec = json.load(f)
        self.cfg = setup_cfg(os.path.join(export_dir, CONFIG_FILE))
        self.run = load_graph(export_dir, self.spec, providers, session_options)
        self.pixel_mean = torch.tensor(self.spec["pixel_mean"]).view(-1, 1, 1)
        self.pixel_std = torch.tensor(self.spec["pixel_std"]).view(-1, 1, 1)
        arch = self.spec["meta_architecture"]
        self.mask_postprocessor = MaskFormerInference(self.cfg) \
            if arch in MASK_CLASSIFICATION else None

    def padded_size(self, image_size):
        """(H, W) the graph takes for an image of ``image_size`` (h, w)."""
        if self.spec["size"]:
            size = tuple(self.spec["size"])
            if image_size[0] > size[0] or image_size[1] > size[1]:
                raise ValueError(f"an image of {image_size[0]}x{image_size[1]} does not fit this "
                                 f"export's fixed size {size[0]}x{size[1]}: export again with a "
                                 "larger --size, or --dynamic.")
            return size
        multiple = self.spec["size_divisibility"]  # two at least: exporter.dynamic_shapes
        return tuple(max(2, -(-side // multiple)) * multiple for side in image_size)

    def preprocess(self, image):
        """(3, h, w) image in pixel values -> the graph's normalised, padded (1, 3, H, W)."""
        (h, w), (ph, pw) = image.shape[-2:], self.padded_size(image.shape[-2:])
        normalised = (image.float() - self.pixel_mean) / self.pixel_std
        return F.pad(normalised, (0, pw - w, 0, ph - h))[None]

    def __call__(self, batched_inputs):
        results = []
        for x in batched_inputs:
            image_size = tuple(x["image"].shape[-2:])
            images = self.preprocess(x["image"])
            inputs = [images]
            if "image_size" in self.spec["inputs"]:  # Mask R-CNN clips its boxes to it
                inputs.append(torch.tensor(image_size))
            raw = dict(zip(self.spec["outputs"], self.run(*inputs)))
            output_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append(self.postprocess(raw, tuple(images.shape[-2:]), image_size,
                                            output_size))
        return results

    def postprocess(self, raw, padded_size, image_size, output_size):
        """The graph's outputs (name -> tensor) for one image of ``image_size`` (h, w) padded to
        ``padded_size`` -> the eager model's output dict at ``output_size``, by the functions
        its inference calls."""
        arch = self.spec["meta_architecture"]
        if arch in MASK_CLASSIFICATION:  # EoMT.postprocess and DinoMask2Former.postprocess
            return self.mask_postprocessor(raw["pred_logits"][0], raw["pred_masks"][0],
                                           padded_size, image_size, output_size)
        if arch == "DinoSemanticSegmentor":  # DinoSemanticSegmentor.forward
            logits = raw["sem_seg_logits"][0]
            stride = padded_size[0] // logits.shape[-2]
            return {"sem_seg": resample_logits(logits, stride, image_size, output_size)}
        # GeneralizedRCNN._postprocess
        fields = dict(raw, pred_boxes=Boxes(raw["pred_boxes"]))
        instances = Instances(image_size, **fields)
        return {"instances": detector_postprocess(instances, *output_size)}


class ExportedPredictor(DefaultPredictor):
    """detectron2's ``DefaultPredictor`` on an export: a BGR uint8 (H, W, 3) image -> the
    output dict at (H, W). Its pre-processing is DefaultPredictor's own ``__call__`` (channel
    order, test-time resize) with d2ext's ``ResizeShortestEdge`` of INPUT.MIN_SIZE_TEST /
    MAX_SIZE_TEST, as ``d2ext.engine.load_predictor`` sets it; no model is built."""

    def __init__(self, export_dir, providers=None, session_options=None):  # builds no model
        self.model = ExportedModel(export_dir, providers, session_options)
        self.cfg = self.model.cfg
        self.input_format = self.cfg.INPUT.FORMAT
        self.aug = ResizeShortestEdge([self.cfg.INPUT.MIN_SIZE_TEST] * 2,
                                      self.cfg.INPUT.MAX_SIZE_TEST)
