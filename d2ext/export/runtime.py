"""Run what ``d2ext.export.exporter`` wrote (ONNX Runtime or the ``torch.export`` program) and
get the detectron2 outputs the eager model gives: the graph's raw outputs go through the eager
meta-architecture's own post-processing functions.

    model = ExportedModel("out/eomt")           # called like the eager model in eval mode
    outputs = model([{"image": image_chw, "height": H, "width": W}])
    predictor = ExportedPredictor("out/eomt")   # detectron2's DefaultPredictor
    outputs = predictor(cv2.imread("photo.jpg"))  # {"instances": Instances} at the photo's size
"""
import os

import torch
import torch.nn.functional as F
from detectron2.engine import DefaultPredictor

from ..data.dataset_mappers.lsj_augmentation import ResizeShortestEdge
from ..engine.defaults import setup_cfg
from ..modeling.meta_arch import capabilities
from .spec import config_path, read_spec


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

    Each image is normalised and zero-padded as the eager model does it: each side to the
    padding multiple, in a dynamic export to the spec's ``min_side`` at least. That is one
    multiple for an ONNX file, which the exporter checked equals eager there
    (``exporter.least_padded_side``): its outputs are the eager model's at any size. Padding
    beyond eager's changes the outputs (a ViT attends to the extra zero-padded patches too;
    cropping the graph's outputs back cannot undo that), which happens:
    - for a ``torch_export`` program, which takes two multiples at least
      (``exporter.dynamic_shapes``; so does an ONNX file that failed the check or has no
      ``min_side``): a side that the test-time resize leaves within one multiple (a thin image)
      gets one more multiple of padding than eager adds;
    - for a fixed-size export, which pads every image to its size (and refuses a larger one).
    A model that declares its own test protocol (``ExportInterface.test_protocol``: EoMT with
    MODEL.EOMT.TEST.PROTOCOL "eomt") is fed by it instead, as its eager inference is.
    """

    def __init__(self, export_dir, providers=None, session_options=None):
        self.spec = read_spec(export_dir)
        self.cfg = setup_cfg(config_path(export_dir))
        self.run = load_graph(export_dir, self.spec, providers, session_options)
        self.pixel_mean = torch.tensor(self.spec["pixel_mean"]).view(-1, 1, 1)
        self.pixel_std = torch.tensor(self.spec["pixel_std"]).view(-1, 1, 1)
        # The eager model's own post-processing of the graph's raw outputs.
        self.postprocessor = capabilities(self.cfg).export.postprocessor(self.cfg)
        # A model whose inference feeds the network its own way (EoMT's protocol) does so here.
        self.test_protocol = capabilities(self.cfg).export.test_protocol(self.cfg)

    def padded_size(self, image_size):
        """(H, W) the graph takes for an image of ``image_size`` (h, w)."""
        if self.spec["size"]:
            size = tuple(self.spec["size"])
            if image_size[0] > size[0] or image_size[1] > size[1]:
                raise ValueError(f"an image of {image_size[0]}x{image_size[1]} does not fit this "
                                 f"export's fixed size {size[0]}x{size[1]}: export again with a "
                                 "larger --size, or --dynamic.")
            return size
        multiple = self.spec["size_divisibility"]
        least = self.spec.get("min_side") or 2 * multiple  # an export written without it: two
        return tuple(max(least, -(-side // multiple) * multiple) for side in image_size)

    def preprocess(self, image):
        """(3, h, w) image in pixel values -> the graph's normalised, padded (1, 3, H, W)."""
        (h, w), (ph, pw) = image.shape[-2:], self.padded_size(image.shape[-2:])
        normalised = (image.float() - self.pixel_mean) / self.pixel_std
        return F.pad(normalised, (0, pw - w, 0, ph - h))[None]

    def _predict(self, images):
        """Normalised (N, 3, H, W) -> the graph's outputs by name, one image per run."""
        runs = [self.run(images[i:i + 1]) for i in range(len(images))]
        return {name: torch.cat([r[k] for r in runs])
                for k, name in enumerate(self.spec["outputs"])}

    def __call__(self, batched_inputs):
        if self.test_protocol is not None:
            return self.test_protocol(batched_inputs, self._predict)
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
        return self.postprocessor(raw, padded_size, image_size, output_size)


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
