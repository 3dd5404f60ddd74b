from .dino_mask2former import DinoMask2Former
from .mask_former_inference import MaskFormerInference
# --- Encoder-only mode (EoMT) ---
from .eomt import EoMT  # noqa: F401,E402
# --- Semantic segmentation ---
from .dino_semantic_segmentor import DinoSemanticSegmentor  # noqa: F401,E402
