"""SAM 3 text prompts: what ``TextPromptSegmentor`` builds on."""
from .sam3 import (
    SAM3_HUB_ID,
    TextPromptError,
    decode_phrases,
    load_sam3,
    preprocess_image,
    resize_mask_probabilities,
    tokenize_phrases,
    word_tokenizer,
)
