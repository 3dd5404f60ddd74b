"""The shared base of d2ext's zero-training prompt models (``DinoSamPrompt``,
``TextPromptSegmentor``): nothing to train, RGB images in 0..255, prompts decoded in batches
sized by device, detectron2 ``Instances`` out."""
import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from ..mask_ops import mask_boxes
from .capabilities import Capabilities


def prompt_capabilities(**fields):
    """The ``Capabilities`` every prompt model shares: untrained, instances only, named
    classes, no graph (``not_exportable`` says which per-image Python loop prevents one)."""
    return Capabilities(
        trainable=False, classes_from_model=True, **fields)


class PromptSegmentor(nn.Module):
    """Inference-only instance segmentation from prompts. A subclass defines
    ``inference_one(record) -> Instances`` and the ``device`` property, and sets
    ``class_names`` (what ``pred_classes`` index).

    Input: detectron2's list of dicts with "image" (3, H, W) in ``input_format`` and optional
    "height"/"width" (the output size). Output per image: ``{"instances": Instances}`` with
    ``pred_masks`` (N, height, width) bool, ``pred_boxes`` (the masks' boxes), ``scores`` (N,)
    and ``pred_classes`` (N,).
    """

    def __init__(self, input_format="RGB"):
        super().__init__()
        self.input_format = input_format
        self.class_names = []

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError(f"{type(self).__name__} has nothing to train: evaluate it with "
                               "tools/train_net.py --eval-only, or run tools/demo.py")
        return [{"instances": self.inference_one(x)} for x in batched_inputs]

    def rgb_image(self, record):
        """The record's image as float RGB (3, H, W) in 0..255 on the model's device."""
        image = record["image"].to(self.device).float()
        return image.flip(0) if self.input_format == "BGR" else image

    def per_call(self, configured, cuda, other):
        """Prompts per decoder call: ``configured``, or by device when it is 0 (a GPU wants
        large batches; on a CPU smaller ones keep each call's activations in cache)."""
        return configured or (cuda if self.device.type == "cuda" else other)

    def make_instances(self, size, masks, scores, classes):
        """``Instances`` of ``size`` (H, W) from bool masks (N, H, W), scores (N,) and class
        indices (N,); boxes are the masks' boxes."""
        instances = Instances(size)
        if masks is None or len(masks) == 0:
            masks = torch.zeros((0, *size), dtype=torch.bool, device=self.device)
            scores = torch.zeros(0, device=self.device)
            classes = torch.zeros(0, dtype=torch.long, device=self.device)
        instances.pred_masks = masks
        instances.pred_boxes = Boxes(mask_boxes(masks))
        instances.scores = scores
        instances.pred_classes = classes
        return instances
