"""The SAM-prompt meta-architecture (DINO features choose prompts, SAM draws masks)."""
from .decoding import decode_prompts, mask_nms
from .dino_sam_prompt import DinoSamPrompt
from .prompts import PROMPT_METHODS, Prompts
from .prototypes import PrototypeError
from .sam_models import SamCheckpointError, build_sam_model, build_tiny_sam
