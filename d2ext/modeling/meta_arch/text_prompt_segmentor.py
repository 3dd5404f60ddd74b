"""TextPromptSegmentor: "segment every duck". SAM 3 finds every instance of each class's phrase;
detectron2 ``Instances`` come out, with the class of the phrase that found them."""
import difflib
import logging

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from ...data.datasets import evaluation_thing_classes
from ..mask_ops import mask_nms
from ..text_prompt import (
    TextPromptError,
    decode_phrases,
    load_sam3,
    preprocess_image,
    resize_mask_probabilities,
    tokenize_phrases,
)
from .prompt_segmentor import PromptSegmentor, prompt_capabilities

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class TextPromptSegmentor(PromptSegmentor):
    """Zero-training instance segmentation from class names with SAM 3 (transformers'
    ``Sam3Model``); inference only.

    Inputs and outputs: ``PromptSegmentor``'s; ``scores`` best first, ``pred_classes`` the
    index in ``class_names`` of the class whose phrase found the instance. ``phrases`` are the
    prompts and ``phrase_classes`` their classes; by default every class is prompted with its
    name.

    Per image, SAM 3's vision encoder runs once; every class phrase is decoded on that encoding,
    ``phrases_per_batch`` phrases per call (0: by device, CUDA 16, otherwise 4, so that a call's
    activations stay cache-sized on a CPU); the text embeddings are computed once per model,
    not per image. Each phrase's detections are SAM 3's own: score = query score x presence score,
    kept above ``score_threshold``, masks resized and thresholded at ``mask_threshold``, as
    ``Sam3Processor.post_process_instance_segmentation`` gives them. SAM 3 answers one phrase at
    a time, so one object may be found by two phrases; of two detections of different classes
    whose masks overlap by more than ``dedup_iou`` (IoU, at SAM 3's mask resolution) the lower
    scoring one is dropped. At most ``max_instances`` are kept, best score first.
    """

    capabilities = prompt_capabilities(
        open_vocabulary=True,
        not_exportable="its class phrases are decoded per image in Python loops")

    @configurable
    def __init__(self, *, sam3, tokenizer, class_names, phrases=(), phrase_classes=(),
                 image_size=1008, score_threshold=0.3, mask_threshold=0.5, dedup_iou=0.7,
                 max_instances=100, phrases_per_batch=0, input_format="RGB"):
        super().__init__(input_format)
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
        self.image_size = image_size
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.dedup_iou, self.max_instances = dedup_iou, max_instances
        self.phrases_per_batch = phrases_per_batch
        self._text_embeds = None  # (P, context, D) on first use, on the model's device
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, cfg):
        tp = cfg.MODEL.TEXT_PROMPT
        class_names, phrase_classes = match_classes(cfg)  # before the weights: fails fast
        sam3, tokenizer = load_sam3(tp.WEIGHTS)
        return dict(sam3=sam3, tokenizer=tokenizer, class_names=class_names,
                    phrases=list(tp.PROMPTS), phrase_classes=phrase_classes,
                    image_size=tp.IMAGE_SIZE,
                    score_threshold=tp.SCORE_THRESHOLD, mask_threshold=tp.MASK_THRESHOLD,
                    dedup_iou=tp.DEDUP_IOU, max_instances=cfg.TEST.DETECTIONS_PER_IMAGE,
                    phrases_per_batch=tp.PHRASES_PER_BATCH, input_format=cfg.INPUT.FORMAT)

    @property
    def device(self):
        return self.input_ids.device

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
        batch = self.per_call(self.phrases_per_batch, cuda=16, other=4)
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
        image = self.rgb_image(x)
        height, width = x.get("height", image.shape[-2]), x.get("width", image.shape[-1])
        scores, classes, masks = self.detect(image)
        keep = mask_nms(masks > 0, scores, self.dedup_iou, labels=classes)[:self.max_instances]
        full = resize_mask_probabilities(masks[keep], (height, width), self.mask_threshold)
        return self.make_instances((height, width), full, scores[keep], classes[keep])


def match_classes(cfg):
    """(class_names, phrase_classes): what ``pred_classes`` index, and the index of the class of
    each prompted name (MODEL.TEXT_PROMPT.CLASSES, or every class of the test dataset).

    With a test dataset whose classes are known, ``class_names`` are its classes in its order
    and each prompted name is matched to its class by name, so that COCOEvaluator, which maps
    class index i to the dataset's i-th category id, writes the category of that name whatever
    the order or subset named. Without one, the prompted names are the classes, in their order.
    """
    tp = cfg.MODEL.TEXT_PROMPT
    names = [str(c) for c in tp.CLASSES]
    dataset = [str(c) for c in evaluation_thing_classes(cfg)]
    if not dataset:
        if cfg.DATASETS.TEST and names:
            logger.warning(
                f"the test dataset {cfg.DATASETS.TEST[0]!r} names no classes before it is loaded "
                "(no thing_classes in its metadata): pred_classes follow the order of "
                "MODEL.TEXT_PROMPT.CLASSES, and an evaluator maps them to its categories by "
                "position.")
        class_names = list(dict.fromkeys(names))  # a name given twice is one class, two phrases
        return class_names, [class_names.index(c) for c in names]
    if not names:
        return dataset, list(range(len(dataset)))
    test = cfg.DATASETS.TEST[0]
    unknown = [c for c in names if c not in dataset]
    if unknown:
        close = {c: difflib.get_close_matches(c, dataset, n=1) for c in unknown}
        pairs = [f"{m[0]!r} for {c!r}" for c, m in close.items() if m]
        hint = f" (did you mean {', '.join(pairs)}?)" if pairs else ""
        raise TextPromptError(
            f"MODEL.TEXT_PROMPT.CLASSES {unknown} are not classes of the test dataset {test!r}"
            f"{hint}. Its classes: {dataset}. Name some of them (its "
            "predictions are scored against those classes), or set DATASETS.TEST to () to "
            "prompt freely.")
    for name in dict.fromkeys(names):
        where = [i for i, c in enumerate(dataset) if c == name]
        if len(where) > 1:
            to_id = {v: k for k, v in getattr(MetadataCatalog.get(test),
                                              "thing_dataset_id_to_contiguous_id", {}).items()}
            ids = [to_id.get(i, i) for i in where]
            raise TextPromptError(
                f"MODEL.TEXT_PROMPT.CLASSES {name!r}: the test dataset {test!r} gives this name "
                f"to {len(where)} categories (ids {ids}), so its detections have no one "
                "category; give those categories distinct names in the dataset's json.")
    return dataset, [dataset.index(c) for c in names]
