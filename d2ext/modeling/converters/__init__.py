"""Weight converters from other implementations' checkpoints to d2ext's modules."""
from .eomt_hf import EomtConversionError, convert_hf_eomt
from .eomt_zoo import convert_eomt, convert_eomt_checkpoint
from .mask2former_hf import convert_hf_mask2former
