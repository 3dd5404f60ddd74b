"""The parts of the SAM-prompt meta-architecture (d2ext.modeling.meta_arch.DinoSamPrompt):
DINO features choose prompts, SAM draws masks."""
from .decoding import decode_prompts
from .prompts import PROMPT_METHODS, Prompts
from .prototypes import PrototypeError
from .sam_models import SamCheckpointError, build_sam_model, build_tiny_sam
