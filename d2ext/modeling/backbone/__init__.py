# Importing the backbone modules registers them in detectron2's BACKBONE_REGISTRY.
from .archs import (  # noqa: F401
    DINO_ARCHS,
    DINO_CONVNEXT_ARCHS,
    DINO_STRIDE,
    ConvNextArch,
    DinoArch,
)
from .dino_convnext import (  # noqa: F401
    DinoConvNextBackbone,
    build_dino_convnext_backbone,
    build_dino_convnext_fpn_backbone,
)
from .dino_sfp import build_dino_sfp_backbone  # noqa: F401
from .dino_vit import DinoViTBackbone, build_dino_vit_backbone  # noqa: F401
from .dino_weights import DinoWeightsError, load_dino_weights  # noqa: F401
