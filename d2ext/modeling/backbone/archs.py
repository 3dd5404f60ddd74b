"""The DINO architectures d2ext builds, by MODEL.DINO.ARCH name: plain data.

The backbones, the weight loader and the converters all look architectures up here. This module
imports nothing from d2ext (nor torch, transformers or detectron2), so any of them can import it
at module top without an import circle.
"""
from dataclasses import dataclass

# The grid every d2ext backbone presents to detectron2, whatever the ViT's patch size.
DINO_STRIDE = 16


# --- DINOv2 / DINOv3 ViTs (d2ext/modeling/backbone/dino_vit.py) ---
@dataclass(frozen=True)
class DinoArch:
    family: str  # "dinov2", "dinov2_reg" or "dinov3"
    width: int
    depth: int
    heads: int
    patch: int
    mlp: int  # hidden width of the MLP (gated MLPs: of each branch)
    gated: bool = False  # SwiGLU MLP
    hub_id: str = ""  # the official transformers weights for this architecture
    qkv_bias: bool = True  # query and value biases (DINOv3 has no key bias; the 7B none at all)

    @property
    def num_prefix_tokens(self):
        return 1 + (0 if self.family == "dinov2" else 4)

    @property
    def num_parameters(self):
        """Parameters of the ViT, to within its norms, biases and embeddings' small share:
        per block the attention's four projections and the MLP's two (gated: three) matrices."""
        mlp = self.mlp
        if self.gated and self.family.startswith("dinov2"):  # DINOv2's SwiGLU: 2/3 of it, by 8
            mlp = (int(mlp * 2 / 3) + 7) // 8 * 8
        per_block = 4 * self.width ** 2 + (3 if self.gated else 2) * self.width * mlp
        return self.depth * per_block + self.width * (3 * self.patch ** 2 + 8)


def _v2(width, depth, heads, hub, gated=False, reg=False):
    return DinoArch("dinov2_reg" if reg else "dinov2", width, depth, heads, 14, 4 * width, gated,
                    hub)


def _v3(width, depth, heads, mlp, hub, gated=False, qkv_bias=True):
    return DinoArch("dinov3", width, depth, heads, 16, mlp, gated, hub, qkv_bias)


_V3_HUB = "facebook/dinov3-{}-pretrain-lvd1689m"
DINO_ARCHS = {
    "dinov2_vits14": _v2(384, 12, 6, "facebook/dinov2-small"),
    "dinov2_vitb14": _v2(768, 12, 12, "facebook/dinov2-base"),
    "dinov2_vitl14": _v2(1024, 24, 16, "facebook/dinov2-large"),
    "dinov2_vitg14": _v2(1536, 40, 24, "facebook/dinov2-giant", gated=True),
    "dinov2_vits14_reg": _v2(384, 12, 6, "facebook/dinov2-with-registers-small", reg=True),
    "dinov2_vitb14_reg": _v2(768, 12, 12, "facebook/dinov2-with-registers-base", reg=True),
    "dinov2_vitl14_reg": _v2(1024, 24, 16, "facebook/dinov2-with-registers-large", reg=True),
    "dinov2_vitg14_reg": _v2(1536, 40, 24, "facebook/dinov2-with-registers-giant", True, True),
    "dinov3_vits16": _v3(384, 12, 6, 1536, _V3_HUB.format("vits16")),
    "dinov3_vitsplus16": _v3(384, 12, 6, 1536, _V3_HUB.format("vits16plus"), gated=True),
    "dinov3_vitb16": _v3(768, 12, 12, 3072, _V3_HUB.format("vitb16")),
    "dinov3_vitl16": _v3(1024, 24, 16, 4096, _V3_HUB.format("vitl16")),
    "dinov3_vithplus16": _v3(1280, 32, 20, 5120, _V3_HUB.format("vith16plus"), gated=True),
    "dinov3_vit7b16": _v3(4096, 40, 32, 8192, _V3_HUB.format("vit7b16"), gated=True,
                          qkv_bias=False),
    # Tiny random-weight architectures for tests and the CPU quickstart.
    "dinov2_tiny14": DinoArch("dinov2", 64, 4, 2, 14, 128),
    "dinov2_tiny14_reg": DinoArch("dinov2_reg", 64, 4, 2, 14, 128),
    "dinov3_tiny16": DinoArch("dinov3", 64, 4, 2, 16, 128),
}


# --- DINOv3 ConvNeXts (d2ext/modeling/backbone/dino_convnext.py) ---
@dataclass(frozen=True)
class ConvNextArch:
    widths: tuple
    depths: tuple
    hub_id: str = ""


_CONVNEXT_HUB = "facebook/dinov3-convnext-{}-pretrain-lvd1689m"
DINO_CONVNEXT_ARCHS = {
    "dinov3_convnext_tiny": ConvNextArch((96, 192, 384, 768), (3, 3, 9, 3),
                                         _CONVNEXT_HUB.format("tiny")),
    "dinov3_convnext_small": ConvNextArch((96, 192, 384, 768), (3, 3, 27, 3),
                                          _CONVNEXT_HUB.format("small")),
    "dinov3_convnext_base": ConvNextArch((128, 256, 512, 1024), (3, 3, 27, 3),
                                         _CONVNEXT_HUB.format("base")),
    "dinov3_convnext_large": ConvNextArch((192, 384, 768, 1536), (3, 3, 27, 3),
                                          _CONVNEXT_HUB.format("large")),
    # A tiny random-weight architecture for tests and CPU quickstarts.
    "dinov3_convnext_test": ConvNextArch((16, 32, 64, 128), (1, 1, 2, 1)),
}
