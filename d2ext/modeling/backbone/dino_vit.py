"""DINOv2 / DINOv3 ViTs from transformers as a detectron2 Backbone with a true stride of 16."""
import logging
import math
import re
from types import MethodType

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...errors import UserError
from ...utils.memory import available_memory

# The tables live in archs so that the weight loader and the converters can read them without
# importing this module (which imports them); older imports of these names from here still work.
from .archs import DINO_ARCHS, DINO_STRIDE, DinoArch
from .dino_weights import load_dino_weights

logger = logging.getLogger(__name__)

# A block's parameters in transformers' ViTs: "...layer.<i>...." (DINOv2 and DINOv3 alike).
_BLOCK_PARAM = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def _meta_dinov2_interpolate_pos_encoding(self, embeddings, height, width):
    """DINOv2's position embeddings for a ``height`` x ``width`` image as Meta's DINOv2 resamples
    them: bicubic with the scale factor ``(grid + 0.1) / native grid`` (the "interpolate_offset"
    every DINOv2 model without registers was trained and evaluated with). transformers'
    ``Dinov2Model`` resamples to the size instead, which samples the table at other points and so
    moves its patch tokens away from Meta's at any grid other than the native 37 x 37; the
    with-registers models use size and antialiasing in both, so they are left to transformers."""
    num_positions = self.position_embeddings.shape[1] - 1
    if embeddings.shape[1] - 1 == num_positions and height == width:
        return self.position_embeddings
    grid = int(math.sqrt(num_positions))
    patch = self.config.patch_size
    new_h, new_w = height // patch, width // patch
    pos = self.position_embeddings[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, scale_factor=((new_h + 0.1) / grid, (new_w + 0.1) / grid),
                        mode="bicubic", antialias=False)
    pos = pos.permute(0, 2, 3, 1).reshape(1, new_h * new_w, -1)
    return torch.cat([self.position_embeddings[:, :1], pos.to(embeddings.dtype)], dim=1)


def build_hf_vit(arch: DinoArch, drop_path_rate=0.0):
    """A randomly initialised transformers ViT of the given architecture (DINOv2 without
    registers: with Meta's position-embedding resampling,
    ``_meta_dinov2_interpolate_pos_encoding``)."""
    # lazy: import d2ext stays light
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        DINOv3ViTConfig,
        DINOv3ViTModel,
    )

    common = dict(hidden_size=arch.width, num_hidden_layers=arch.depth,
                  num_attention_heads=arch.heads, patch_size=arch.patch,
                  drop_path_rate=drop_path_rate)
    if arch.family == "dinov3":
        config = DINOv3ViTConfig(**common, intermediate_size=arch.mlp, use_gated_mlp=arch.gated,
                                 hidden_act="silu" if arch.gated else "gelu",
                                 num_register_tokens=4, query_bias=arch.qkv_bias,
                                 value_bias=arch.qkv_bias)
        return DINOv3ViTModel(config)
    v2 = dict(common, mlp_ratio=arch.mlp // arch.width, use_swiglu_ffn=arch.gated, image_size=518)
    if arch.family == "dinov2_reg":
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**v2, num_register_tokens=4))
    vit = Dinov2Model(Dinov2Config(**v2))
    vit.embeddings.interpolate_pos_encoding = MethodType(_meta_dinov2_interpolate_pos_encoding,
                                                         vit.embeddings)
    return vit


class DinoViTBackbone(Backbone):
    """A DINOv2 / DINOv3 ViT (transformers) as a detectron2 backbone.

    Input: (N, 3, H, W) normalised images, any H and W. Output: ``{"vit": (N, C, ceil(H/16),
    ceil(W/16))}`` with C = width x len(out_blocks): the layer-normed patch tokens of the chosen
    blocks, concatenated along channels. The stride is exactly 16 for every patch size: the
    image is zero-padded to a multiple of 16 and, for patch-14 models, resampled by 14/16 so each
    14-pixel patch covers one 16-pixel cell of the input (see ``forward``).
    """

    def __init__(self, arch="dinov3_vits16", weights="", out_blocks=(-1,), freeze_blocks=0,
                 drop_path_rate=0.0, gradient_checkpointing=False):
        super().__init__()
        if arch not in DINO_ARCHS:
            raise ValueError(f"MODEL.DINO.ARCH: unknown architecture {arch!r}; "
                             f"choose one of {sorted(DINO_ARCHS)}")
        self.arch = DINO_ARCHS[arch]
        self.vit = build_hf_vit(self.arch, drop_path_rate)
        if weights:
            load_dino_weights(self.vit, weights, arch_name=arch)
        depth = self.arch.depth
        blocks = [b + depth if b < 0 else b for b in out_blocks]
        if not blocks or any(not 0 <= b < depth for b in blocks):
            raise ValueError(f"MODEL.DINO.OUT_BLOCKS={list(out_blocks)}: block indices must lie "
                             f"in [-{depth}, {depth - 1}] for {arch}")
        self.out_blocks = blocks
        self.num_blocks = depth
        # The masked-image-modelling token is used only in pre-training: it never gets a
        # gradient here, which multi-process training (DDP) would report as an error.
        self.vit.embeddings.mask_token.requires_grad_(False)
        self._freeze(freeze_blocks)
        if gradient_checkpointing:
            self.vit.gradient_checkpointing_enable()
        self._out_features = ["vit"]
        self._out_feature_channels = {"vit": self.arch.width * len(blocks)}
        self._out_feature_strides = {"vit": DINO_STRIDE}

    def _freeze(self, freeze_blocks):
        if freeze_blocks == 0:
            return
        frozen = [self.vit] if freeze_blocks < 0 else (
            [self.vit.embeddings] + list(self.blocks)[:freeze_blocks])
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    @property
    def blocks(self):
        """The transformers ViT's blocks (DINOv3: ``vit.model.layer``, DINOv2:
        ``vit.encoder.layer``)."""
        return (self.vit.model if self.arch.family == "dinov3" else self.vit.encoder).layer

    @property
    def final_norm(self):
        """The ViT's final LayerNorm (DINOv3: ``vit.norm``, DINOv2: ``vit.layernorm``); every
        chosen block's tokens get it, as in DINOv2's get_intermediate_layers(norm=True)."""
        return self.vit.norm if self.arch.family == "dinov3" else self.vit.layernorm

    @property
    def size_divisibility(self):
        return DINO_STRIDE

    def layer_id(self, param_name):
        """Depth of one of the ViT's parameters (named relative to ``self.vit``), for layer-wise
        LR decay: 0 for the embeddings, i + 1 for block i, ``num_blocks + 1`` for the final
        norm."""
        block = _BLOCK_PARAM.search(param_name)
        if block:
            return int(block.group(1)) + 1
        return 0 if param_name.startswith("embeddings") else self.num_blocks + 1

    def forward(self, x):
        h, w = x.shape[-2:]
        # integer ceiling division: a graph export keeps it symbolic in the image size
        grid_h, grid_w = -(-h // DINO_STRIDE), -(-w // DINO_STRIDE)
        x = F.pad(x, (0, grid_w * DINO_STRIDE - w, 0, grid_h * DINO_STRIDE - h))
        if self.arch.patch != DINO_STRIDE:
            # Without antialiasing and with align_corners=False every output pixel of patch
            # (i, j) interpolates input pixels of cell (i, j) only, so token (i, j) sees exactly
            # the 16x16 input cell (i, j): boxes and masks stay aligned at stride 16.
            x = F.interpolate(x, size=(grid_h * self.arch.patch, grid_w * self.arch.patch),
                              mode="bilinear", align_corners=False, antialias=False)
        # The blocks are run here rather than through the transformers model with
        # output_hidden_states: the same operations, without the hook installation (a lock)
        # that torch.compile cannot trace (MODEL.COMPILE compiles this backbone in one graph).
        extra = {}
        if self.arch.family == "dinov3":  # as DINOv3ViTModel.forward
            x = x.to(self.vit.embeddings.patch_embeddings.weight.dtype)
            extra["position_embeddings"] = self.vit.rope_embeddings(x)
        tokens = self.vit.embeddings(x)
        skip = self.arch.num_prefix_tokens
        final_norm = self.final_norm
        maps = {}
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, **extra)
            if i in self.out_blocks:
                normed = final_norm(tokens)[:, skip:]
                maps[i] = normed.transpose(1, 2).reshape(x.shape[0], -1, grid_h, grid_w)
        maps = [maps[b] for b in self.out_blocks]
        return {"vit": maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)}

    def output_shape(self):
        return {"vit": ShapeSpec(channels=self._out_feature_channels["vit"], stride=DINO_STRIDE)}

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DINO
        check_memory(d.ARCH, cfg.MODEL.DEVICE)
        return dict(arch=d.ARCH, weights=d.WEIGHTS, out_blocks=tuple(d.OUT_BLOCKS),
                    freeze_blocks=d.FREEZE_BLOCKS, drop_path_rate=d.DROP_PATH_RATE,
                    gradient_checkpointing=d.GRADIENT_CHECKPOINTING)


def check_memory(arch, device):
    """Stop before building ``arch`` when its float32 weights alone exceed the free memory of
    the CPU (where the model is built) or of ``device`` (where it runs), naming both figures."""
    if arch not in DINO_ARCHS:
        return  # DinoViTBackbone names the unknown architecture
    params = DINO_ARCHS[arch].num_parameters
    need = 4 * params
    for where in dict.fromkeys(("cpu", device)):
        free = available_memory(where)
        if free is not None and need > free:
            raise UserError(
                f"MODEL.DINO.ARCH {arch} needs about {need / 1e9:.1f} GB for its float32 weights "
                f"({params / 1e9:.2f} B parameters; full fine-tuning adds {12 * params / 1e9:.0f} "
                f"GB for gradients and AdamW), but {where} has {free / 1e9:.1f} GB free: choose a "
                "smaller MODEL.DINO.ARCH or a machine with more memory.")


@BACKBONE_REGISTRY.register()
def build_dino_vit_backbone(cfg, input_shape):
    """The bare DINO ViT (one stride-16 map named "vit"); for heads that take it directly."""
    return DinoViTBackbone(**DinoViTBackbone.from_config(cfg))
