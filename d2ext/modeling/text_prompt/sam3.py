"""SAM 3 (transformers' ``Sam3Model``) for promptable concept segmentation: loading, phrase
tokenising, the image preprocessing of ``Sam3Processor``, and phrase decoding on one shared
image encoding."""
import os
import re

import torch
from torch.nn import functional as F

from ...errors import UserError

SAM3_HUB_ID = "facebook/sam3"
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class TextPromptError(UserError):
    """SAM 3 weights, phrases or classes that cannot be used; the message says what to do."""


def load_sam3(weights):
    """``(Sam3Model, tokenizer)`` from a hub id or a local ``save_pretrained`` directory (model
    and tokenizer saved together, as ``Sam3Processor.save_pretrained`` and ``hf download``
    leave them)."""
    from transformers import AutoTokenizer, Sam3Model

    if not weights:
        raise TextPromptError(
            f"MODEL.TEXT_PROMPT.WEIGHTS is empty: set it to the SAM 3 hub id {SAM3_HUB_ID!r} or "
            "a local directory holding a SAM 3 model and its tokenizer (save_pretrained).")
    if not os.path.isdir(weights) and not _HUB_ID.fullmatch(weights):
        raise TextPromptError(f"MODEL.TEXT_PROMPT.WEIGHTS={weights!r}: no such directory, and "
                              f"not a hub id such as {SAM3_HUB_ID!r}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(weights)
        model = Sam3Model.from_pretrained(weights)
    except (OSError, ValueError) as err:
        if os.path.isdir(weights):
            raise TextPromptError(
                f"MODEL.TEXT_PROMPT.WEIGHTS={weights!r}: the directory holds no SAM 3 model with "
                f"its tokenizer (config.json, weights, tokenizer files). Cause: {err}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        raise TextPromptError(
            f"MODEL.TEXT_PROMPT.WEIGHTS={weights!r} could not be loaded: it is not in the local "
            f"hub cache (HF_HUB_OFFLINE={'1' if offline else 'unset'}). SAM 3 on the Hugging Face "
            "hub is gated: accept the licence on the model page with your account and log in "
            "(`hf auth login`, or set HF_TOKEN) before the first download. On a machine without "
            "internet, download it elsewhere (`hf download facebook/sam3 --local-dir DIR`), copy "
            f"DIR here and set MODEL.TEXT_PROMPT.WEIGHTS=DIR. Cause: {type(err).__name__}: "
            f"{err}") from None
    return model.eval(), tokenizer


def tokenize_phrases(tokenizer, phrases, context):
    """``input_ids`` and ``attention_mask`` (P, context) of the phrases, padded as
    ``Sam3Processor`` pads them; a phrase longer than the text encoder's ``context`` tokens is
    refused by name (it would be cut or break the position embeddings)."""
    lengths = [len(ids) for ids in tokenizer(list(phrases))["input_ids"]]
    too_long = [f"{p!r} ({n} tokens)" for p, n in zip(phrases, lengths) if n > context]
    if too_long:
        raise TextPromptError(
            f"MODEL.TEXT_PROMPT phrases longer than SAM 3's text context of {context} tokens: "
            f"{', '.join(too_long)}; shorten them (a short noun phrase works best).")
    encoded = tokenizer(list(phrases), padding="max_length", max_length=context,
                        return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def preprocess_image(image_rgb, size):
    """``Sam3Processor``'s image preprocessing: the RGB image (3, H, W), 0..255, resized to
    ``size`` x ``size`` as 8-bit pixels (bilinear, antialiased), scaled to [-1, 1]. Returns
    (1, 3, size, size) float."""
    from torchvision.transforms.v2 import functional as TF

    pixels = image_rgb.round().clamp(0, 255).to(torch.uint8)
    resized = TF.resize(pixels, [size, size], interpolation=TF.InterpolationMode.BILINEAR,
                        antialias=True)
    return ((resized.float() / 255.0 - 0.5) / 0.5)[None]


def decode_phrases(model, vision, text_embeds, attention_mask):
    """SAM 3's detector and mask decoder for P phrases on one image encoding: ``vision`` (the
    image's ``get_vision_features``, batch 1) is shared by every phrase (expanded, not copied)
    and ``text_embeds`` (P phrases' ``get_text_features``) are decoded in one batch, the same as
    P separate ``Sam3Model`` calls on that image. Returns (scores (P, Q) = query score x presence
    score, mask logits (P, Q, h, w))."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    count = attention_mask.shape[0]
    shared = Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(f.expand(count, -1, -1, -1) for f in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(p.expand(count, -1, -1, -1)
                                    for p in vision.fpn_position_encoding))
    out = model(vision_embeds=shared, text_embeds=text_embeds, attention_mask=attention_mask)
    scores = out.pred_logits.sigmoid()
    if out.presence_logits is not None:
        scores = scores * out.presence_logits.sigmoid()
    return scores, out.pred_masks


def resize_mask_probabilities(mask_logits, size, threshold=0.5):
    """Masks (N, h, w) logits -> bool (N, H, W): probabilities resized bilinearly, then
    thresholded, as ``Sam3Processor.post_process_instance_segmentation`` does."""
    if len(mask_logits) == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=mask_logits.device)
    probs = F.interpolate(mask_logits.sigmoid()[None], size=size, mode="bilinear",
                          align_corners=False)[0]
    return probs > threshold


def word_tokenizer(words, context=32):
    """A word-level tokenizer over ``words`` (plus <pad>, <s>, </s>, <unk>) that frames every
    phrase as CLIP's does (start token, words, end token): what a random-weight SAM 3 (tests,
    benchmarks) needs in place of CLIP's vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + [w.lower() for w in words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", model_max_length=context)
