"""Weight converters from other implementations' checkpoints to d2ext's modules."""
from .mask2former_hf import convert_hf_mask2former
