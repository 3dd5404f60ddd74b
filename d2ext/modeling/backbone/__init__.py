from .dino_convnext import (DINO_CONVNEXT_ARCHS, DinoConvNextBackbone,
                            build_dino_convnext_backbone, build_dino_convnext_fpn_backbone)
from .dino_sfp import build_dino_sfp_backbone
from .dino_vit import DINO_ARCHS, DINO_STRIDE, DinoViTBackbone, build_dino_vit_backbone
from .dino_weights import DinoWeightsError, load_dino_weights
