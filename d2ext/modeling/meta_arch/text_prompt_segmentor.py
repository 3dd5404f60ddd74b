"""TextPromptSegmentor: "segment every duck". SAM 3 finds every instance of each class's phrase;
detectron2 ``Instances`` come out, with the class of the phrase that found them."""
import logging

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances
from torch import nn

from ...data.datasets import test_thing_classes
from ..mask_ops import mask_boxes, mask_nms
from ..text_prompt import (TextPromptError, decode_phrases, load_sam3, preprocess_image,
                           resize_mask_probabilities, tokenize_phrases)

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class TextPromptSegmentor(nn.Module):
    """Zero-training instance segmentation from class names with SAM 3 (transformers'
    ``Sam3Model``); inference only.

    Input: detectron2's list of dicts with "image" (3, H, W) in ``input_format`` and optional
    "height"/"width" (the output size). Output per image: ``{"instances": Instances}`` with
    ``pred_masks`` (N, height, width) bool, ``pred_boxes`` (the masks' boxes), ``scores`` (N,)
    best first, ``pred_classes`` (N,): the index in ``class_names`` of the class whose phrase
    found the instance. ``phrases`` are the prompts and ``phrase_classes`` their classes; by
    default every class is prompted with its name.

    Per image, SAM 3's vision encoder runs once; every class phrase is decoded on that encoding,
    ``phrases_per_batch`` phrases per call (0: by device, CUDA 16, otherwise 4: on a CPU larger
    batches ran slower, their activations no longer cache-sized); the
    text embeddings are computed once per model, not per image. Each phrase's detections are SAM 3's own: score = query score x presence score,
    kept above ``score_threshold``, masks resized and thresholded at ``mask_threshold``, as
    ``Sam3Processor.post_process_instance_segmentation`` gives them. SAM 3 answers one phrase at
    a time, so one object may be found by two phrases; of two detections of different classes
    whose masks overlap by more than ``dedup_iou`` (IoU, at SAM 3's mask resolution) the lower
    scoring one is dropped. At most ``max_instances`` are kept, best score first.
    """

    @configurable
    def __init__(self, *, sam3, tokenizer, class_names, phrases=(), phrase_classes=(),
                 image_size=1008, score_threshold=0.3, mask_threshold=0.5, dedup_iou=0.7,
                 max_instances=100, phrases_per_batch=0, input_format="RGB"):
        super().__init__()
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise TextPromptError(
                "no classes to find: set MODEL.TEXT_PROMPT.CLASSES (tools/demo.py: --classes "
                "duck panda), or evaluate on a dataset whose metadata has thing_classes.")
        phrase_classes = list(phrase_classes) or list(range(len(self.class_names)))
        phrases = list(phrases) or [""] * len(phrase_classes)
        if len(phrases) != len(phrase_classes):
            raise TextPromptError(
                f"MODEL.TEXT_PROMPT.PROMPTS has {len(phrases)} phrases for {len(phrase_classes)} "
                "classes: give one per class ('' = the class name).")
        self.phrases = [p or self.class_names[c] for p, c in zip(phrases, phrase_classes)]
        self.register_buffer("phrase_classes", torch.tensor(phrase_classes, dtype=torch.long),
                             persistent=False)
        self.sam3 = sam3
        context = sam3.config.text_config.max_position_embeddings
        input_ids, attention_mask = tokenize_phrases(tokenizer, self.phrases, context)
        self.register_buffer("input_ids", input_ids, persistent=False)
        self.register_buffer("attention_mask", attention_mask, persistent=False)
        self.image_size, self.input_format = image_size, input_format
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.dedup_iou, self.max_instances = dedup_iou, max_instances
        self.phrases_per_batch = phrases_per_batch
        self._text_embeds = None  # (P, context, D) on first use, on the model's device
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, cfg):
        tp = cfg.MODEL.TEXT_PROMPT
        dataset = test_thing_classes(cfg)
        vocabulary = dataset or list(tp.CLASSES)  # what pred_classes index
        prompted = list(tp.CLASSES) or vocabulary
        unknown = [c for c in prompted if c not in vocabulary]
        if unknown:
            raise TextPromptError(
                f"MODEL.TEXT_PROMPT.CLASSES {unknown} are not classes of the test dataset "
                f"{cfg.DATASETS.TEST[0]!r} ({dataset}): its predictions are scored against those "
                "classes. Name some of them, or set DATASETS.TEST to () to prompt freely.")
        sam3, tokenizer = load_sam3(tp.WEIGHTS)
        return dict(sam3=sam3, tokenizer=tokenizer, class_names=vocabulary,
                    phrases=list(tp.PROMPTS),
                    phrase_classes=[vocabulary.index(c) for c in prompted],
                    image_size=tp.IMAGE_SIZE,
                    score_threshold=tp.SCORE_THRESHOLD, mask_threshold=tp.MASK_THRESHOLD,
                    dedup_iou=tp.DEDUP_IOU, max_instances=cfg.TEST.DETECTIONS_PER_IMAGE,
                    phrases_per_batch=tp.PHRASES_PER_BATCH, input_format=cfg.INPUT.FORMAT)

    @property
    def device(self):
        return self.input_ids.device


    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError("TextPromptSegmentor has nothing to train: evaluate it with "
                               "tools/train_net.py --eval-only, or run tools/demo.py")
        return [{"instances": self.inference_one(x)} for x in batched_inputs]

    @torch.no_grad()
    def text_embeds(self):
        """SAM 3's text features (P, context, D) of every phrase; they depend on the phrases
        only, so they are computed once."""
        if self._text_embeds is None or self._text_embeds.device != self.device:
            self._text_embeds = self.sam3.get_text_features(
                input_ids=self.input_ids, attention_mask=self.attention_mask).pooler_output
        return self._text_embeds

    @torch.no_grad()
    def detect(self, image_rgb):
        """Every phrase's detections on one RGB image (3, H, W) in 0..255: (scores (N,),
        classes (N,), mask logits (N, h, w)) above the score threshold, unsorted."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pixels = preprocess_image(image_rgb.to(self.device), self.image_size)
        vision = self.sam3.get_vision_features(pixel_values=pixels)
        text = self.text_embeds()
        batch = self.phrases_per_batch or (16 if self.device.type == "cuda" else 4)
        found = []
        for start in range(0, len(self.phrases), batch):
            chunk = slice(start, start + batch)
            scores, masks = decode_phrases(
                self.sam3, vision, BaseModelOutputWithPooling(pooler_output=text[chunk]),
                self.attention_mask[chunk])
            phrase, query = (scores > self.score_threshold).nonzero(as_tuple=True)
            found.append((scores[phrase, query], self.phrase_classes[phrase + start],
                           masks[phrase, query]))
        return tuple(torch.cat(parts) for parts in zip(*found))

    def inference_one(self, x):
        image = x["image"].to(self.device).float()
        if self.input_format == "BGR":
            image = image.flip(0)
        height, width = x.get("height", image.shape[-2]), x.get("width", image.shape[-1])
        scores, classes, masks = self.detect(image)
        keep = mask_nms(masks > 0, scores, self.dedup_iou, labels=classes)[:self.max_instances]
        result = Instances((height, width))
        full = resize_mask_probabilities(masks[keep], (height, width), self.mask_threshold)
        result.pred_masks = full
        result.pred_boxes = Boxes(mask_boxes(full))
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        return result
