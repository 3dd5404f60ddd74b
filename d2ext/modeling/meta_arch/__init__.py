from .dino_mask2former import DinoMask2Former
# --- Encoder-only mode (EoMT) ---
from .eomt import EoMT  # noqa: F401,E402
# --- Semantic segmentation ---
from .dino_semantic_segmentor import DinoSemanticSegmentor  # noqa: F401,E402
# --- DINO prompts + SAM masks ---
from .dino_sam_prompt import DinoSamPrompt  # noqa: F401,E402
# --- SAM 3 text prompts ---
from .text_prompt_segmentor import TextPromptSegmentor  # noqa: F401,E402
