from .backbone import *  # noqa: F401,F403  (importing registers the backbones)
# --- SAM-prompt meta-architecture (issue 4) ---
from .sam_prompt import DinoSamPrompt  # noqa: F401,E402  (registers META_ARCH DinoSamPrompt)
