"""The capabilities of detectron2's own meta-architectures that d2ext's configs use:
``GeneralizedRCNN`` (Mask R-CNN on the DINO backbones) and ``SemanticSegmentor``."""
from functools import partial

import torch
from detectron2.modeling import GeneralizedRCNN, SemanticSegmentor
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from .capabilities import (
    BenchmarkParts,
    Capabilities,
    ExportInterface,
    declare,
    run_as_detectron2_inputs,
)


def backbone_parts(model):
    """The backbone, and the ViT inside a simple feature pyramid, timed apart."""
    if hasattr(model.backbone, "net"):
        return {"backbone (ViT)": model.backbone.net, "backbone + neck": model.backbone}, {}
    return {"backbone": model.backbone}, {}


def compiled_backbone(model):
    """The backbone alone: the proposal and ROI heads branch on tensor values (box filtering,
    NMS, per-image loops) and stay eager."""
    return {"backbone": (model, "backbone")}


def mask_rcnn_inference(model, images, image_size, output_names):
    """detectron2's ``GeneralizedRCNN.inference`` from the normalised, padded image to the ROI
    heads' ``Instances``, before ``detector_postprocess``: images (1, 3, H, W) and image_size
    (2,) int64, the (h, w) of the image inside the padding -> the tensors of ``output_names``:
    pred_boxes (N, 4) in input pixels, scores (N,), pred_classes (N,) and, with MODEL.MASK_ON,
    pred_masks (N, 1, M, M) mask probabilities of each box."""
    image_list = ImageList(images, [(image_size[0], image_size[1])])
    features = model.backbone(images)
    proposals, _ = model.proposal_generator(image_list, features, None)
    instances = model.roi_heads(image_list, features, proposals, None)[0][0]
    fields = dict(instances.get_fields(), pred_boxes=instances.pred_boxes.tensor)
    return tuple(fields[name] for name in output_names)


def _mask_rcnn_graph(model, output_names):
    from detectron2.export import TracingAdapter  # lazy: pulls in detectron2's export stack

    # TracingAdapter traces detectron2's len() of boxes as a tensor size (patch_builtin_len):
    # the detection count stays dynamic. Its example inputs only give their structure.
    structure = (torch.zeros(1, 3, 1, 1), torch.zeros(2, dtype=torch.int64))
    graph = TracingAdapter(model, structure,
                           partial(mask_rcnn_inference, output_names=output_names))
    return graph.eval()


def _mask_rcnn_postprocessor(cfg):
    def postprocess(raw, padded_size, image_size, output_size):  # GeneralizedRCNN._postprocess
        fields = dict(raw, pred_boxes=Boxes(raw["pred_boxes"]))
        return {"instances": detector_postprocess(Instances(image_size, **fields), *output_size)}

    return postprocess


declare(GeneralizedRCNN, Capabilities(
    num_classes_key="MODEL.ROI_HEADS.NUM_CLASSES",
    export=ExportInterface(
        inputs=("images", "image_size"),
        output_names=lambda model: ["pred_boxes", "scores", "pred_classes"]
        + (["pred_masks"] if model.roi_heads.mask_on else []),
        graph=_mask_rcnn_graph, postprocessor=_mask_rcnn_postprocessor,
        # The ONNX file is traced, the path of detectron2's own deployment tools; that exporter
        # writes opset 20 at most.
        formats=("onnx",), traced=True, max_opset=20,
        formats_reason="detectron2's RPN and box head branch on tensor values (e.g. `if not "
        "valid_mask.all()`), which torch.export cannot capture"),
    benchmark=BenchmarkParts(predict=run_as_detectron2_inputs, parts=backbone_parts),
    compiled_parts=compiled_backbone))

SEMANTIC = dict(num_classes_key="MODEL.SEM_SEG_HEAD.NUM_CLASSES", class_metadata="stuff_classes",
                outputs=lambda cfg: ("sem_seg",))

declare(SemanticSegmentor, Capabilities(
    not_exportable="its logits are resampled outside any graph; use "
    "DinoSemanticSegmentor", benchmark=BenchmarkParts(predict=run_as_detectron2_inputs,
                                                      parts=backbone_parts),
    compiled_parts=compiled_backbone, **SEMANTIC))
