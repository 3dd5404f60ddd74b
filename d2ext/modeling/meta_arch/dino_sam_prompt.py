"""DinoSamPrompt: zero-training instance segmentation. DINO patch features choose the prompts,
SAM draws the masks, detectron2 ``Instances`` come out."""
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from ...data.datasets import evaluation_thing_classes
from ..backbone.archs import DINO_STRIDE
from ..mask_ops import mask_nms, threshold_resized
from ..sam_prompt.decoding import decode_prompts
from ..sam_prompt.prompts import (
    PROMPT_METHODS,
    attention_prompts,
    capture_last_attention_input,
    cls_attention_saliency,
    clustering_prompts,
    grid_prompts,
    prototype_prompts,
)
from ..sam_prompt.prototypes import (
    average_prototypes,
    collect_references,
    mask_coverage,
    resize_reference,
)
from ..sam_prompt.sam_models import build_sam_model
from .capabilities import BenchmarkParts, run_as_detectron2_inputs
from .prompt_segmentor import PromptSegmentor, prompt_capabilities


@META_ARCH_REGISTRY.register()
class DinoSamPrompt(PromptSegmentor):
    """Prompts from DINO features, masks from SAM; inference only, nothing is trained.

    Inputs and outputs: ``PromptSegmentor``'s; ``scores`` sorted descending, ``pred_classes``
    the prototype's class with METHOD "prototypes", else 0 ("object").

    Per image: one DINO pass (stride-16 patch features, ``backbone`` output "vit") and one SAM
    image-encoder pass (the image resized to the encoder's size); the prompts of the chosen
    ``method`` go through SAM's prompt encoder and mask decoder ``prompts_per_batch`` at a time;
    masks whose IoU with a better one exceeds ``dedup_iou`` are dropped. Score: SAM's predicted
    IoU, times the mean prototype similarity inside the mask with prototypes.
    """

    capabilities = prompt_capabilities(
        prompt_methods=True, not_exportable="its prompts are chosen per image in Python loops",
        benchmark=BenchmarkParts(predict=run_as_detectron2_inputs,
                                 parts=lambda model: ({"backbone": model.backbone}, {})))

    @configurable
    def __init__(self, *, backbone, sam, method="clustering", num_segments=5, points_per_side=16,
                 references=(), class_names=(), min_similarity=0.35, dedup_iou=0.7,
                 score_threshold=0.0, max_instances=100, prompts_per_batch=0,
                 pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375),
                 input_format="RGB", reference_resize=(640, 1024)):
        super().__init__(input_format)
        if method not in PROMPT_METHODS:
            raise ValueError(f"MODEL.SAM_PROMPT.METHOD={method!r}: choose one of {PROMPT_METHODS}")
        if method == "prototypes" and not references:
            raise ValueError("MODEL.SAM_PROMPT.METHOD 'prototypes' needs reference masks "
                             "(MODEL.SAM_PROMPT.PROTOTYPE_DATASET or PROTOTYPE_REFERENCES)")
        self.backbone, self.sam = backbone, sam
        self.method, self.num_segments, self.points_per_side = method, num_segments, points_per_side
        self.references = list(references)
        # Without prototypes every instance is class 0, a class-agnostic "object".
        self.class_names = list(class_names) if method == "prototypes" else ["object"]
        self.min_similarity, self.dedup_iou = min_similarity, dedup_iou
        self.score_threshold, self.max_instances = score_threshold, max_instances
        self.prompts_per_batch, self.reference_resize = prompts_per_batch, reference_resize
        bgr = input_format == "BGR"  # normalise in RGB order, which DINO and SAM expect
        mean, std = torch.tensor(pixel_mean), torch.tensor(pixel_std)
        self.register_buffer("pixel_mean", (mean.flip(0) if bgr else mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", (std.flip(0) if bgr else std).view(3, 1, 1), False)
        # (K, C) and their class indices (K,), computed on first use on the model's device.
        self.prototypes = self.prototype_classes = None
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, cfg):
        sp = cfg.MODEL.SAM_PROMPT
        references, class_names = (), ()
        if sp.METHOD == "prototypes":
            references, class_names = collect_references(
                sp.PROTOTYPE_DATASET, sp.PROTOTYPE_SHOTS,
                [list(r) for r in sp.PROTOTYPE_REFERENCES], sp.PROTOTYPE_CLASSES,
                index_names=evaluation_thing_classes(cfg))
        sam = build_sam_model(sp.SAM_TYPE, sp.SAM_CHECKPOINT)  # first: a missing file fails fast
        return dict(backbone=build_backbone(cfg), sam=sam,
                    method=sp.METHOD, num_segments=sp.NUM_SEGMENTS,
                    points_per_side=sp.POINTS_PER_SIDE, references=references,
                    class_names=class_names, min_similarity=sp.PROTOTYPE_MIN_SIMILARITY,
                    dedup_iou=sp.DEDUP_IOU, score_threshold=sp.SCORE_THRESHOLD,
                    max_instances=sp.MAX_INSTANCES, prompts_per_batch=sp.PROMPTS_PER_BATCH,
                    pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
                    input_format=cfg.INPUT.FORMAT,
                    reference_resize=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))

    @property
    def device(self):
        return self.pixel_mean.device

    @torch.no_grad()
    def dino_features(self, image_rgb, with_saliency=False):
        """L2-normalised patch features (C, h, w) of one RGB image (3, H, W) in 0..255, and
        the class-token attention saliency (h, w) when ``with_saliency`` (else None)."""
        x = ((image_rgb - self.pixel_mean) / self.pixel_std)[None]
        if not with_saliency:
            return F.normalize(self.backbone(x)["vit"][0], dim=0), None
        with capture_last_attention_input(self.backbone) as captured:
            features = self.backbone(x)["vit"][0]
        return F.normalize(features, dim=0), cls_attention_saliency(self.backbone, captured,
                                                                     features.shape[-2:])

    @torch.no_grad()
    def sam_embedding(self, image_rgb):
        """SAM's image embedding (1, C, g, g) and the size (h, w) the image was resized to
        (longest side = the encoder's input size, then zero-padded to a square)."""
        side = self.sam.image_encoder.img_size
        h, w = image_rgb.shape[-2:]
        scale = side / max(h, w)
        # SAM's ResizeLongestSide rounding; at least one pixel for a very thin image
        size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
        x = F.interpolate(image_rgb[None], size=size, mode="bilinear", align_corners=False,
                          antialias=True)
        return self.sam.image_encoder(self.sam.preprocess(x)), size

    @torch.no_grad()
    def compute_prototypes(self):
        """Prototypes (K, C) from the reference masks, with the model's DINO backbone."""
        features, coverages = [], []
        for reference in self.references:
            image, mask = resize_reference(*reference.load(), *self.reference_resize)
            image = torch.tensor(image, device=self.device).permute(2, 0, 1).float()
            feature = self.dino_features(image)[0]
            features.append(feature)
            coverages.append(mask_coverage(torch.as_tensor(mask, device=self.device),
                                           feature.shape[-2:]))
        self.prototypes, self.prototype_classes = average_prototypes(
            features, coverages, [r.class_index for r in self.references], self.class_names)
        return self.prototypes

    def make_prompts(self, image_rgb):
        """This image's prompts (image pixel coordinates) and, with prototypes, the similarity
        maps (K, h, w) to score them."""
        size = tuple(image_rgb.shape[-2:])
        if self.method == "grid":
            return grid_prompts(size, self.points_per_side, self.device), None
        features, saliency = self.dino_features(image_rgb, self.method == "attention")
        if self.method == "clustering":
            return clustering_prompts(features, size, self.num_segments), None
        if self.method == "attention":
            return attention_prompts(saliency, self.num_segments), None
        if self.prototypes is None:
            self.compute_prototypes()
        return prototype_prompts(features, self.prototypes, size, self.min_similarity)

    def inference_one(self, record):
        image = self.rgb_image(record)
        height, width = image.shape[-2:]
        out_size = (record.get("height", height), record.get("width", width))
        prompts, similarity = self.make_prompts(image)
        if len(prompts) == 0:
            return self.make_instances(out_size, None, None, None)
        # Cell centres of a partial last row / column of the stride-16 grid lie past the edge.
        prompts.points[..., 0].clamp_(max=width - 1)
        prompts.points[..., 1].clamp_(max=height - 1)
        embedding, sam_size = self.sam_embedding(image)
        scale = torch.tensor([sam_size[1] / width, sam_size[0] / height], device=self.device)
        boxes = None if prompts.boxes is None else prompts.boxes * scale.repeat(2)
        # Each prompt of a batch carries its own (4096, 256) copy of the image tokens.
        batch = self.per_call(self.prompts_per_batch, cuda=64, other=8)
        logits, iou = decode_prompts(self.sam, embedding, prompts.points * scale, prompts.labels,
                                     boxes, batch, image_size=sam_size)
        # Low-res logits (4x SAM's embedding grid) over the grid cells covering the image; keep
        # the part over the image.
        low = 4 * embedding.shape[-1] / self.sam.image_encoder.img_size
        logits = logits[:, :math.ceil(sam_size[0] * low), :math.ceil(sam_size[1] * low)]
        masks = logits > self.sam.mask_threshold
        scores = iou.clamp(0, 1)
        if similarity is not None:
            scores = scores * _mean_similarity_in_masks(similarity, prompts.classes, masks,
                                                        (height, width))
        keep = ((scores > self.score_threshold) & masks.flatten(1).any(1)).nonzero()[:, 0]
        keep = keep[mask_nms(masks[keep], scores[keep], self.dedup_iou)][:self.max_instances]
        if len(keep) == 0:
            return self.make_instances(out_size, None, None, None)
        full = threshold_resized(logits[keep], lambda x: F.interpolate(
            x[:, None], size=out_size, mode="bilinear", align_corners=False)[:, 0],
            out_size, self.sam.mask_threshold)
        classes = (self.prototype_classes[prompts.classes[keep]] if similarity is not None
                   else torch.zeros(len(keep), dtype=torch.long, device=self.device))
        return self.make_instances(out_size, full, scores[keep], classes)


def _mean_similarity_in_masks(similarity, classes, masks, image_size):
    """Mean similarity to its class prototype inside each mask, clamped at 0: (P,).
    ``similarity`` (K, h, w) on the stride-16 grid; ``masks`` (P, mh, mw) over the image."""
    h, w = similarity.shape[-2:]
    per_pixel = F.interpolate(similarity[None], size=(h * DINO_STRIDE, w * DINO_STRIDE),
                              mode="nearest")[..., :image_size[0], :image_size[1]]
    per_pixel = F.interpolate(per_pixel, size=masks.shape[-2:], mode="bilinear",
                              align_corners=False)[0]
    weights = masks.float()
    mean = (per_pixel[classes] * weights).sum((1, 2)) / weights.sum((1, 2)).clamp(min=1)
    return mean.clamp(min=0)

