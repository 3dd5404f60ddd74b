from .backbone import *  # noqa: F401,F403  (importing registers the backbones)

# --- Mask2Former-style head ---
from .criterion import SetCriterion  # noqa: F401,E402
from .dino_linear_sem_seg_head import DinoLinearSemSegHead  # noqa: F401  (registers)
from .matcher import HungarianMatcher  # noqa: F401,E402
from .meta_arch import *  # noqa: F401,F403,E402  (importing registers the meta-architectures)
from .pixel_decoder import *  # noqa: F401,F403,E402  (registration)
from .transformer_decoder import *  # noqa: F401,F403,E402
# --- SAM-prompt meta-architecture ---
