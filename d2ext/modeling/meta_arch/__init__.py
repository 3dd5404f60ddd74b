from .dino_mask2former import DinoMask2Former
from .mask_former_inference import MaskFormerInference
# --- Encoder-only mode (EoMT; issue 3, part B) ---
from .eomt import EoMT  # noqa: F401,E402
# --- Semantic segmentation (issue 6) ---
from .dino_semantic_segmentor import DinoSemanticSegmentor  # noqa: F401,E402
