"""The shared base of d2ext's mask-classification models (``DinoMask2Former``, ``EoMT``): Q
queries, each a class distribution and a mask, matched to the targets by the set criterion in
training and turned into instances / semantic / panoptic outputs at inference."""
import torch
from detectron2.structures import ImageList
from torch import nn

from ..criterion import StepTargets, step_targets
from ..postprocessing import MaskFormerInference
from .capabilities import BenchmarkParts, Capabilities, ExportInterface, PredictGraph

OUTPUT_SWITCHES = {"instances": "INSTANCE_ON", "sem_seg": "SEMANTIC_ON",
                   "panoptic_seg": "PANOPTIC_ON"}


def mask_classification_outputs(cfg):
    """The outputs MODEL.MASK_FORMER.TEST.{INSTANCE,SEMANTIC,PANOPTIC}_ON switch on."""
    test = cfg.MODEL.MASK_FORMER.TEST
    return tuple(key for key, switch in OUTPUT_SWITCHES.items() if test.get(switch))


def _export_postprocessor(cfg):
    inference = MaskFormerInference(cfg)

    def postprocess(raw, padded_size, image_size, output_size):
        return inference(raw["pred_logits"][0], raw["pred_masks"][0], padded_size, image_size,
                         output_size)

    return postprocess


def _step_loss_context(model, batched_inputs):
    """The set criterion normalised by the whole step's targets (``prepare_targets``'
    instances), for gradient accumulation."""
    counts = [len(x["instances"]) if "instances" in x else 0 for x in batched_inputs]
    return step_targets(StepTargets.gather(counts, next(model.parameters()).device))


def mask_classification_capabilities(*, fixed_size_reason=None, graph_constants=None,
                                     test_protocol=None, benchmark, **fields):
    """The ``Capabilities`` every mask-classification model shares, with its own parts. The
    compiled network is ``predict`` (backbone and heads; a model whose ``predict`` reads values
    a graph cannot branch on names another method in ``compiled_parts``)."""
    constants = graph_constants or (lambda model: {})
    fields.setdefault("compiled_parts", lambda model: {"network": (model, "predict")})
    export = ExportInterface(
        output_names=lambda model: ["pred_logits", "pred_masks"],
        graph=lambda model, names: PredictGraph(model, names, constants(model)).eval(),
        postprocessor=_export_postprocessor, graph_constants=constants,
        **({"fixed_size_reason": fixed_size_reason} if fixed_size_reason else {}),
        **({"test_protocol": test_protocol} if test_protocol else {}))
    return Capabilities(
        num_classes_key="MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        outputs=mask_classification_outputs, train_mapper="mask_former_instance_lsj",
        padding_multiple=lambda model: model.size_divisibility, export=export,
        benchmark=benchmark, step_loss_context=_step_loss_context, **fields)


def mask_classification_benchmark(peer, num_queries_key, parts):
    return BenchmarkParts(predict=lambda model: model.predict, peer=peer,
                          num_queries_key=num_queries_key, parts=parts)


class MaskClassificationModel(nn.Module):
    """detectron2 plumbing of a mask-classification model: normalisation and padding to a
    multiple of ``size_divisibility`` (never to a square), training targets, the set criterion,
    per-image post-processing. A subclass defines ``predict(images)``: normalised, padded
    (N, 3, H, W) -> {"pred_logits" (N, Q, K+1), "pred_masks" (N, Q, h, w)[, "aux_outputs"]}.

    Input: detectron2's list of dicts with "image" (3, H, W) in INPUT.FORMAT, optional
    "height"/"width" (output size) and, for training, "instances" with ``gt_classes`` and
    ``gt_masks`` (``BitMasks`` or a (N, H, W) tensor). Output: in training the criterion's
    weighted losses; at inference per image a dict with "instances", "sem_seg",
    "panoptic_seg" as enabled by MODEL.MASK_FORMER.TEST.*_ON.
    """

    def __init__(self, *, criterion, postprocessor, pixel_mean, pixel_std, size_divisibility):
        super().__init__()
        self.criterion = criterion
        self.postprocessor = postprocessor
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        """Normalise and pad to a multiple of ``size_divisibility`` -> ``ImageList``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def postprocess(self, outputs, batched_inputs, images):
        """Per image, the output dict at its original size (see ``MaskFormerInference``)."""
        results = []
        padded = tuple(images.tensor.shape[-2:])
        for logits, masks, x, size in zip(outputs["pred_logits"], outputs["pred_masks"],
                                          batched_inputs, images.image_sizes):
            out_size = (x.get("height", size[0]), x.get("width", size[1]))
            results.append(self.postprocessor(logits, masks, padded, size, out_size))
        return results

    def prepare_targets(self, batched_inputs, images):
        """Per image {"labels": (N,), "masks": (N, H_pad, W_pad) float}, masks zero-padded like
        the images."""
        targets = []
        h_pad, w_pad = images.tensor.shape[-2:]
        mapper = type(self).capabilities.train_mapper
        for x in batched_inputs:
            if "instances" not in x:
                raise ValueError(f"{type(self).__name__} in training mode needs 'instances' in "
                                 f"every input: use INPUT.DATASET_MAPPER_NAME {mapper}.")
            inst = x["instances"].to(self.device)
            if not inst.has("gt_masks") and len(inst):
                raise ValueError(
                    f"{type(self).__name__} trains on masks, but the instances of "
                    f"{x.get('file_name', 'an input')} have none: set MODEL.MASK_ON True "
                    "(detectron2's DatasetMapper drops masks without it) or use "
                    f"INPUT.DATASET_MAPPER_NAME {mapper}.")
            masks = getattr(inst.gt_masks, "tensor", inst.gt_masks) if inst.has("gt_masks") \
                else torch.zeros((0,) + tuple(inst.image_size), device=self.device)
            padded = torch.zeros((len(masks), h_pad, w_pad), dtype=torch.float32,
                                 device=self.device)
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst.gt_classes, "masks": padded})
        return targets

    def training_outputs(self, images):
        """``predict``'s outputs for the criterion (a subclass adds or drops supervision)."""
        return self.predict(images)

    def inference(self, batched_inputs):
        """Per image the output dict: normalise, pad to the size multiple, ``predict``,
        ``postprocess`` (a subclass may feed the network otherwise, e.g. EoMT's protocol)."""
        images = self.preprocess_image(batched_inputs)
        return self.postprocess(self.predict(images.tensor), batched_inputs, images)

    def forward(self, batched_inputs):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        outputs = self.training_outputs(images.tensor)
        return self.criterion(outputs, self.prepare_targets(batched_inputs, images))

