"""A d2ext model as one graph file: ONNX (``model.onnx``) or a ``torch.export`` program
(``model.pt2``), plus ``export.json`` (what the graph takes and gives) and ``config.yaml``.

Each graph takes what the meta-architecture sees after its own normalisation and padding and
returns its raw outputs; ``d2ext.export.runtime`` turns them into the meta-architecture's
detectron2 outputs with the same post-processing functions. One image per run.

- EoMT, DinoMask2Former: images (1, 3, H, W) -> pred_logits (1, Q, K+1), pred_masks
  (1, Q, H/4, W/4).
- DinoSemanticSegmentor: images -> sem_seg_logits (1, K, H/16, W/16).
- GeneralizedRCNN (Mask R-CNN), ONNX only: images and image_size (2,) int64, the (h, w) of the
  image inside the padding (eager detectron2 clips proposals and boxes to its
  ``ImageList.image_sizes``) -> pred_boxes (N, 4), scores (N,), pred_classes (N,)
  [, pred_masks (N, 1, M, M) probabilities].

H and W are dynamic, multiples of the model's padding multiple (EoMT: its patch size), except
where ``fixed_size_reason`` names why not. Both formats come from one ``torch.export`` program
(the ONNX file from the dynamo exporter), except Mask R-CNN: detectron2's proposal and box heads
branch in Python on tensor values (e.g. ``if not valid_mask.all()``), which ``torch.export``
refuses, so its ONNX file is traced through detectron2's ``TracingAdapter``
(``torch.onnx.export(dynamo=False)``, the path of detectron2's own deployment tools). A trace
keeps any size the code turns into a Python number (the DINO ViT's ``math.ceil`` of its patch
grid): such a graph is fixed to one input size. The detection count stays dynamic.
"""
import json
import math
import os
import warnings
from functools import partial

import torch
from torch import nn

from ..modeling.backbone.dino_vit import DINO_ARCHS

# GridSample (the deformable attention, the mask resampling) needs opset >= 16; the dynamo
# exporter writes opset 18 and up; the oldest is the widest-read, so the default. Opset 23
# adds ONNX's own Attention op, one fused node per attention instead of MatMul, Softmax, MatMul
# over the whole score matrix; ONNX Runtime reads it from 1.23 on.
ONNX_OPSET = 18
ONNX_OPSETS = range(18, 24)
# The TorchScript-based exporter (Mask R-CNN's, below) writes opset 20 at most.
TRACED_MAX_OPSET = 20
FORMATS = {"onnx": "model.onnx", "torch_export": "model.pt2"}
SPEC_FILE, CONFIG_FILE = "export.json", "config.yaml"
# Warnings of the Mask R-CNN trace, silenced by message: the TorchScript-based exporter is
# chosen (see above), and calls its own deprecated logging set-up; tracing warns at every Python
# read of a tensor in detectron2 (asserts, empty-input checks; the ViT's patch grid, why that
# size is fixed) and at advanced indexing, whose indices are never negative there. The tool
# compares the export with the eager model instead.
TRACE_WARNINGS = ("You are using the legacy TorchScript-based ONNX export",
                  "The feature will be removed", "Converting a tensor to a Python",
                  "Exporting aten::index operator", "Constant folding - Only steps=1")
MASK_CLASSIFICATION = ("EoMT", "DinoMask2Former")
DINO_VIT_BACKBONES = ("build_dino_vit_backbone", "build_dino_sfp_backbone")
EXPORTABLE = MASK_CLASSIFICATION + ("DinoSemanticSegmentor", "GeneralizedRCNN")
# d2ext's prompt families: why no graph holds them.
NOT_EXPORTABLE = {
    "DinoSamPrompt": "its prompts are chosen per image in Python loops",
    "TextPromptSegmentor": "its class phrases are decoded per image in Python loops",
}


class ExportError(ValueError):
    """A model or option that cannot be exported; the message says why and what to do."""


class PredictGraph(nn.Module):
    """``model.predict(images)`` as a function of tensors: normalised, padded images
    (1, 3, H, W) -> the tensors of ``output_names`` (from predict's dict, or its one tensor).

    EoMT's masked-attention probabilities are read once here: the graph fixes them (it cannot
    branch on a buffer's values).
    """

    def __init__(self, model, output_names):
        super().__init__()
        self.model = model
        self.output_names = output_names
        self.predict_kwargs = {}
        if hasattr(model, "attn_mask_probs"):
            self.predict_kwargs["attn_mask_probs"] = model.attn_mask_probs.tolist()

    def forward(self, images):
        outputs = self.model.predict(images, **self.predict_kwargs)
        if isinstance(outputs, torch.Tensor):
            return outputs
        return tuple(outputs[name] for name in self.output_names)


def mask_rcnn_inference(model, images, image_size, output_names):
    """detectron2's ``GeneralizedRCNN.inference`` from the normalised, padded image to the ROI
    heads' ``Instances``, before ``detector_postprocess``: images (1, 3, H, W) and image_size
    (2,) int64, the (h, w) of the image inside the padding -> the tensors of ``output_names``:
    pred_boxes (N, 4) in input pixels, scores (N,), pred_classes (N,) and, with MODEL.MASK_ON,
    pred_masks (N, 1, M, M) mask probabilities of each box."""
    from detectron2.structures import ImageList

    image_list = ImageList(images, [(image_size[0], image_size[1])])
    features = model.backbone(images)
    proposals, _ = model.proposal_generator(image_list, features, None)
    instances = model.roi_heads(image_list, features, proposals, None)[0][0]
    fields = dict(instances.get_fields(), pred_boxes=instances.pred_boxes.tensor)
    return tuple(fields[name] for name in output_names)


def fixed_size_reason(cfg, fmt):
    """Why ``cfg``'s model exports in ``fmt`` at a fixed input size only, or None when H and
    W can be dynamic."""
    if getattr(DINO_ARCHS.get(cfg.MODEL.DINO.ARCH), "family", "").startswith("dinov2"):
        return (f"MODEL.DINO.ARCH={cfg.MODEL.DINO.ARCH!r}: DINOv2 position embeddings are "
                "resampled to a patch grid of Python integers, which fixes the exported size")
    if (fmt == "torch_export" and cfg.MODEL.META_ARCHITECTURE == "DinoMask2Former"
            and cfg.MODEL.BACKBONE.NAME in DINO_VIT_BACKBONES):
        return ("torch.export cannot load back the saved program of the Mask2Former-style head "
                "on a DINO ViT with a symbolic size (a split of the ViT's RoPE); --format onnx "
                "is dynamic")
    return None


def check_exportable(cfg, fmt, dynamic, opset=ONNX_OPSET):
    """Raise ``ExportError`` for a config that cannot be exported in ``fmt`` ("onnx" or
    "torch_export"), with ``dynamic`` H and W or at a fixed size, at ONNX ``opset``, before any
    model is built."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in EXPORTABLE:
        why = f" ({NOT_EXPORTABLE[arch]})" if arch in NOT_EXPORTABLE else ""
        raise ExportError(f"MODEL.META_ARCHITECTURE={arch!r} cannot be exported{why}; "
                          f"exportable: {', '.join(EXPORTABLE)}.")
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}.")
    if arch == "GeneralizedRCNN" and fmt == "torch_export":
        raise ExportError("Mask R-CNN (GeneralizedRCNN) exports to ONNX only: detectron2's RPN "
                          "and box head branch on tensor values, which torch.export cannot "
                          "capture; use --format onnx.")
    if fmt == "onnx" and opset not in ONNX_OPSETS:
        raise ExportError(f"--opset {opset}: choose {ONNX_OPSETS[0]} to {ONNX_OPSETS[-1]} "
                          "(GridSample needs 16 and up, the dynamo exporter writes 18 and up).")
    if fmt == "onnx" and arch == "GeneralizedRCNN" and opset > TRACED_MAX_OPSET:
        raise ExportError(f"--opset {opset}: Mask R-CNN is traced by the TorchScript-based "
                          f"exporter, which writes opset {TRACED_MAX_OPSET} at most; give "
                          f"--opset {TRACED_MAX_OPSET} or lower.")
    reason = fixed_size_reason(cfg, fmt)
    if dynamic and reason:
        raise ExportError(f"{reason}: give --size H W instead of --dynamic.")


def size_multiple(model):
    """The multiple every padded input side must be: what the model's own padding uses."""
    if hasattr(model, "size_divisibility"):  # EoMT, DinoMask2Former
        return model.size_divisibility
    return model.backbone.size_divisibility  # detectron2's R-CNN and SemanticSegmentor


def build_graph(model, cfg):
    """(graph module in eval mode, input names, output names) for ``model`` of an exportable
    META_ARCHITECTURE (``check_exportable``)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in MASK_CLASSIFICATION:
        probs = getattr(model, "attn_mask_probs", torch.zeros(0)).tolist()
        if any(0 < p < 1 for p in probs):
            raise ExportError(
                f"EoMT's attn_mask_probs {probs} (saved with the checkpoint) lie between 0 and "
                "1: masked attention is then random per query, which a graph cannot reproduce; "
                "export a checkpoint from before or after the annealing (MODEL.EOMT."
                "ANNEAL_START_ITERS / ANNEAL_END_ITERS).")
        names = ["pred_logits", "pred_masks"]
        return PredictGraph(model, names).eval(), ["images"], names
    if arch == "DinoSemanticSegmentor":
        if not hasattr(model.sem_seg_head, "layers"):
            raise ExportError(f"MODEL.SEM_SEG_HEAD.NAME={cfg.MODEL.SEM_SEG_HEAD.NAME!r} has no "
                              "`layers` (logits at the feature stride); exportable: "
                              "DinoLinearSemSegHead.")
        return PredictGraph(model, ["sem_seg_logits"]).eval(), ["images"], ["sem_seg_logits"]
    from detectron2.export import TracingAdapter

    names = ["pred_boxes", "scores", "pred_classes"]
    names += ["pred_masks"] if model.roi_heads.mask_on else []
    # TracingAdapter traces detectron2's len() of boxes as a tensor size (patch_builtin_len):
    # the detection count stays dynamic. Its example inputs only give their structure.
    structure = (torch.zeros(1, 3, 1, 1), torch.zeros(2, dtype=torch.int64))
    graph = TracingAdapter(model, structure, partial(mask_rcnn_inference, output_names=names))
    return graph.eval(), ["images", "image_size"], names


def example_inputs(input_names, size):
    """A random normalised image of ``size`` (H, W) (and its full size as image_size)."""
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    if len(input_names) == 1:
        return (images,)
    return images, torch.tensor(size, dtype=torch.int64)


def largest_test_size(cfg, multiple):
    """The square of INPUT.MAX_SIZE_TEST rounded up to ``multiple``: every test-time resized
    image fits in it."""
    side = max(2, math.ceil(cfg.INPUT.MAX_SIZE_TEST / multiple)) * multiple
    return side, side


def dynamic_shapes(multiple):
    """H and W symbolic, each ``multiple`` x an integer >= 2 (torch.export fixes a side of one
    multiple), up to 8192 pixels, as torch.export's ``dynamic_shapes`` of ``images``."""
    blocks = [torch.export.Dim(f"{side}_blocks", min=2, max=max(2, 8192 // multiple))
              for side in ("height", "width")]
    return {"images": {2: multiple * blocks[0], 3: multiple * blocks[1]}}


def export_model(model, cfg, output_dir, fmt, size=None, opset=ONNX_OPSET):
    """Write ``model`` (built from ``cfg``, eval mode) to ``output_dir`` in ``fmt`` ("onnx" or
    "torch_export"): the graph file, ``export.json`` and ``config.yaml``.

    ``size`` (H, W) fixes the input size; None makes H and W dynamic (traced at
    ``largest_test_size``). ``opset``: the ONNX opset (``ONNX_OPSETS``). Returns the spec
    written to export.json. Raises ``ExportError`` (a one-line message) for what cannot be
    exported.
    """
    check_exportable(cfg, fmt, dynamic=size is None, opset=opset)
    multiple = size_multiple(model)
    if size is not None and any(side <= 0 or side % multiple for side in size):
        raise ExportError(f"--size {size[0]} {size[1]}: each side must be a positive multiple "
                          f"of {multiple} for this model (its padding multiple).")
    graph, input_names, output_names = build_graph(model, cfg)
    inputs = example_inputs(input_names, size or largest_test_size(cfg, multiple))
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FORMATS[fmt])
    with torch.no_grad():
        if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
            # The detection count is dynamic: the trace's count must not become a constant.
            dynamic_axes = {name: {0: "detections"} for name in output_names}
            if size is None:
                dynamic_axes["images"] = {2: "height", 3: "width"}
            with warnings.catch_warnings():
                for message in TRACE_WARNINGS:
                    warnings.filterwarnings("ignore", message=message)
                torch.onnx.export(graph, inputs, path, dynamo=False, opset_version=opset,
                                  input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes)
        else:
            program = torch.export.export(graph, inputs,
                                          dynamic_shapes=None if size else dynamic_shapes(multiple))
            if fmt == "torch_export":
                torch.export.save(program, path)
            else:
                # One file, unless the weights near protobuf's 2 GiB limit: above 1 GiB they
                # go to model.onnx.data beside it (ONNX Runtime reads them from there).
                weights = sum(p.numel() * p.element_size() for p in model.parameters())
                torch.onnx.export(program, inputs, path, dynamo=True, opset_version=opset,
                                  input_names=input_names, output_names=output_names,
                                  external_data=weights > 2**30, verbose=False)
    if fmt == "onnx":
        import onnx

        onnx.checker.check_model(path, full_check=True)
    spec = {
        "format": fmt, "file": FORMATS[fmt], "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "inputs": input_names, "outputs": output_names,
        # null: any H and W that are multiples of size_divisibility, two multiples at least.
        "size": list(size) if size else None, "size_divisibility": multiple,
        "input_format": cfg.INPUT.FORMAT, "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": list(cfg.MODEL.PIXEL_STD), "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
    }
    if fmt == "onnx":
        spec["onnx_opset"] = opset
    if "attn_mask_probs" in getattr(graph, "predict_kwargs", {}):
        spec["attn_mask_probs"] = graph.predict_kwargs["attn_mask_probs"]
    with open(os.path.join(output_dir, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=1)
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        f.write(cfg.dump())
    return spec


def difference_from_eager(model, cfg, export_dir, sizes):
    """Largest absolute difference between the export's outputs and the eager model's on a
    random normalised image of each of ``sizes`` ((H, W) each); outputs whose shapes differ
    (a detection count) count as infinite."""
    from .runtime import load_graph

    with open(os.path.join(export_dir, SPEC_FILE)) as f:
        spec = json.load(f)
    graph = build_graph(model, cfg)[0]
    run = load_graph(export_dir, spec)
    worst = 0.0
    for size in sizes:
        inputs = example_inputs(spec["inputs"], size)
        with torch.no_grad():
            expected = graph(*inputs)
        expected = [expected] if isinstance(expected, torch.Tensor) else expected
        for want, got in zip(expected, run(*inputs)):
            if want.shape != got.shape:
                return math.inf
            worst = max(worst, (want.float() - got.float()).abs().max().item())
    return worst
