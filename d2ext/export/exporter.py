"""A d2ext model as one graph file: ONNX (``model.onnx``) or a ``torch.export`` program
(``model.pt2``), plus ``export.json`` (what the graph takes and gives) and ``config.yaml``
(``d2ext.export.spec``).

Each graph takes what the meta-architecture sees after its own normalisation and padding and
returns its raw outputs; ``d2ext.export.runtime`` turns them into the meta-architecture's
detectron2 outputs with the same post-processing functions. One image per run. What a model's
graph takes and gives, and how, is its ``ExportInterface`` (``capabilities(cfg).export``):

- EoMT, DinoMask2Former: images (1, 3, H, W) -> pred_logits (1, Q, K+1), pred_masks
  (1, Q, H/4, W/4).
- DinoSemanticSegmentor: images -> sem_seg_logits (1, K, H/16, W/16).
- GeneralizedRCNN (Mask R-CNN), ONNX only: images and image_size (2,) int64, the (h, w) of the
  image inside the padding (eager detectron2 clips proposals and boxes to its
  ``ImageList.image_sizes``) -> pred_boxes (N, 4), scores (N,), pred_classes (N,)
  [, pred_masks (N, 1, M, M) probabilities].

H and W are dynamic, multiples of the model's padding multiple (EoMT: its patch size), except
where ``fixed_size_reason`` names why not. Both formats come from one ``torch.export`` program
(the ONNX file from the dynamo exporter), except for models whose interface is ``traced``
(Mask R-CNN): their ONNX file is traced through detectron2's ``TracingAdapter``
(``torch.onnx.export(dynamo=False)``). A trace keeps any size the code turns into a Python
number (the DINO ViT's ``math.ceil`` of its patch grid): such a graph is fixed to one input
size. The first axis of a traced graph's outputs (the detection count) stays dynamic.
"""
import math
import os
import warnings

import torch

from ..errors import UserError
from ..modeling.backbone.archs import DINO_ARCHS
from ..modeling.meta_arch import capabilities
from ..modeling.meta_arch.capabilities import not_exportable_message
from .runtime import load_graph
from .spec import FORMATS, read_spec, write_spec

# GridSample (the deformable attention, the mask resampling) needs opset >= 16; the dynamo
# exporter writes opset 18 and up; the oldest is the widest-read, so the default. Opset 23
# adds ONNX's own Attention op, one fused node per attention instead of MatMul, Softmax, MatMul
# over the whole score matrix; ONNX Runtime reads it from 1.23 on.
ONNX_OPSET = 18
ONNX_OPSETS = range(18, 24)
# Warnings of a traced export, silenced by message: the TorchScript-based exporter is
# chosen (see above), and calls its own deprecated logging set-up; tracing warns at every Python
# read of a tensor in detectron2 (asserts, empty-input checks; the ViT's patch grid, why that
# size is fixed) and at advanced indexing, whose indices are never negative there. The tool
# compares the export with the eager model instead.
TRACE_WARNINGS = ("You are using the legacy TorchScript-based ONNX export",
                  "The feature will be removed", "Converting a tensor to a Python",
                  "Exporting aten::index operator", "Constant folding - Only steps=1")


class ExportError(UserError):
    """A model or option that cannot be exported; the message says why and what to do."""


def fixed_size_reason(cfg, fmt):
    """Why ``cfg``'s model exports in ``fmt`` at a fixed input size only, or None when H and
    W can be dynamic."""
    if getattr(DINO_ARCHS.get(cfg.MODEL.DINO.ARCH), "family", "").startswith("dinov2"):
        return (f"MODEL.DINO.ARCH={cfg.MODEL.DINO.ARCH!r}: DINOv2 position embeddings are "
                "resampled to a patch grid of Python integers, which fixes the exported size")
    export = capabilities(cfg).export
    return export.fixed_size_reason(cfg, fmt) if export is not None else None


def check_exportable(cfg, fmt, dynamic, opset=ONNX_OPSET):
    """Raise ``ExportError`` for a config that cannot be exported in ``fmt`` ("onnx" or
    "torch_export"), with ``dynamic`` H and W or at a fixed size, at ONNX ``opset``, before any
    model is built."""
    caps = capabilities(cfg)
    if caps.export is None:
        raise ExportError(not_exportable_message(caps))
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}.")
    export = caps.export
    if fmt not in export.formats:
        why = f": {export.formats_reason}" if export.formats_reason else ""
        raise ExportError(f"{caps.name} exports to {', '.join(export.formats)} only{why}; use "
                          f"--format {export.formats[0]}.")
    if fmt == "onnx" and opset not in ONNX_OPSETS:
        raise ExportError(f"--opset {opset}: choose {ONNX_OPSETS[0]} to {ONNX_OPSETS[-1]} "
                          "(GridSample needs 16 and up, the dynamo exporter writes 18 and up).")
    if fmt == "onnx" and export.max_opset and opset > export.max_opset:
        raise ExportError(f"--opset {opset}: {caps.name} is traced by the TorchScript-based "
                          f"exporter, which writes opset {export.max_opset} at most; give "
                          f"--opset {export.max_opset} or lower.")
    reason = fixed_size_reason(cfg, fmt)
    if dynamic and reason:
        raise ExportError(f"{reason}: give --size H W instead of --dynamic.")


def size_multiple(model):
    """The multiple every padded input side must be: what the model's own padding uses."""
    return capabilities(model).padding_multiple(model)


def build_graph(model, cfg=None):
    """(graph module in eval mode, input names, output names) for an exportable ``model``;
    ``ExportError`` for a state no graph can hold."""
    export = capabilities(model).export
    try:
        names = export.output_names(model)
        graph = export.graph(model, names)
    except ValueError as err:
        raise ExportError(str(err)) from None
    return graph, list(export.inputs), names


def example_inputs(input_names, size):
    """A random normalised image of ``size`` (H, W) (and its full size as image_size)."""
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    if len(input_names) == 1:
        return (images,)
    return images, torch.tensor(size, dtype=torch.int64)


def largest_test_size(cfg, multiple):
    """The square of INPUT.MAX_SIZE_TEST rounded up to ``multiple``: every test-time resized
    image fits in it (two multiples at least: a dynamic export is traced at this size, which
    must lie in ``dynamic_shapes``' range)."""
    side = max(2, math.ceil(cfg.INPUT.MAX_SIZE_TEST / multiple)) * multiple
    return side, side


def least_padded_side(graph, input_names, run, multiple):
    """The smallest H and W to give a dynamic ONNX graph ``run`` (``load_graph``'s function):
    one ``multiple``, the eager model's own padding of a thin image, where the graph equals
    ``graph`` (the module it was exported from) on images one multiple high and one multiple
    wide; else two, the least its torch.export program took (``dynamic_shapes``).

    The check is needed because the ONNX file carries no lower bound, but its graph was traced
    assuming no side is one block: a step that depends on that (a squeeze, a broadcast) would
    differ or fail there. Traced (TorchScript) graphs are checked the same way."""
    for size in ((multiple, 3 * multiple), (3 * multiple, multiple)):
        inputs = example_inputs(input_names, size)
        try:
            with torch.no_grad():
                want = graph(*inputs)
            got = run(*inputs)
        except Exception:  # either side refusing the size (ONNX Runtime has its own error types)
            return 2 * multiple
        want = [want] if isinstance(want, torch.Tensor) else want
        for a, b in zip(want, got):
            if a.shape != b.shape:
                return 2 * multiple
            # Far above float rounding, far below what a wrongly specialised step changes.
            if a.numel() and (a.float() - b.float()).abs().max() > \
                    1e-3 * max(1.0, a.float().abs().max().item()):
                return 2 * multiple
    return multiple


def dynamic_shapes(multiple):
    """H and W symbolic, each ``multiple`` x an integer >= 2, up to 8192 pixels, as
    torch.export's ``dynamic_shapes`` of ``images``.

    Two multiples, not one, because torch.export gives every symbolic size a range from 2 (its
    0/1 specialisation): ``multiple * Dim(min=1)`` is raised to a block count of 2 with a guard
    refusing 1, and a plain ``Dim(min=multiple)`` fails on the models' own guards that a patch
    grid side is not 1 (the memory format of a convolution over a view of the tokens). A
    program therefore refuses a side of one multiple; the ONNX file converted from it has no
    such bound and is checked there instead (``least_padded_side``)."""
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
    caps = capabilities(model)
    with torch.no_grad():
        if caps.export.traced:
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
        "format": fmt, "file": FORMATS[fmt], "meta_architecture": caps.name,
        "inputs": input_names, "outputs": output_names,
        # null: any H and W that are multiples of size_divisibility, min_side at least.
        "size": list(size) if size else None, "size_divisibility": multiple, "min_side": None,
        "input_format": cfg.INPUT.FORMAT, "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": list(cfg.MODEL.PIXEL_STD), "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
    }
    if fmt == "onnx":
        spec["onnx_opset"] = opset
    if size is None:
        # A side of one multiple where the graph takes it, so that a thin image is padded as
        # the eager model pads it (more padding changes what a ViT attends to).
        spec["min_side"] = 2 * multiple if fmt == "torch_export" else least_padded_side(
            graph, input_names, load_graph(output_dir, spec), multiple)
    constants = caps.export.graph_constants(model)  # e.g. EoMT's attention-mask probabilities
    if constants:
        spec["graph_constants"] = constants
    write_spec(output_dir, spec, cfg)
    return spec


def difference_from_eager(model, cfg, export_dir, sizes):
    """Largest absolute difference between the export's outputs and the eager model's on a
    random normalised image of each of ``sizes`` ((H, W) each); outputs whose shapes differ
    (a detection count) count as infinite."""
    spec = read_spec(export_dir)
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
