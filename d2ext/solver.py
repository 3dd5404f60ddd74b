"""Optimizer for DINO-backbone models: backbone LR multiplier and layer-wise LR decay."""
import re

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from .modeling.backbone.dino_vit import DinoViTBackbone

_BLOCK = re.compile(r"(?:^|\.)layer\.(\d+)\.")
# Token and position parameters get no weight decay, as in DINO's and ViTDet's recipes.
_NO_DECAY = ("cls_token", "register_tokens", "position_embeddings")


def dino_lr_factor_func(model, backbone_multiplier=1.0, layer_decay=1.0):
    """name -> LR factor: ``backbone_multiplier * layer_decay ** (depth + 1 - layer_id)`` for the
    DINO ViT's parameters (embeddings: layer 0, block i: i + 1, final norm: depth + 1) and 1.0
    for everything else (neck, heads)."""
    depth = {(name + "." if name else "") + "vit.": m.num_blocks
             for name, m in model.named_modules() if isinstance(m, DinoViTBackbone)}

    def factor(name):
        for prefix in depth:
            if name.startswith(prefix):
                rest = name[len(prefix):]
                block = _BLOCK.search(rest)
                layer_id = (int(block.group(1)) + 1 if block else
                            0 if rest.startswith("embeddings") else depth[prefix] + 1)
                return backbone_multiplier * layer_decay ** (depth[prefix] + 1 - layer_id)
        return 1.0

    return factor


def build_optimizer(cfg, model):
    """AdamW or SGD over ``get_default_optimizer_params`` with the DINO LR factors, wrapped in
    detectron2's gradient clipping (SOLVER.CLIP_GRADIENTS)."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=dino_lr_factor_func(model, cfg.SOLVER.BACKBONE_MULTIPLIER,
                                           cfg.MODEL.DINO.LAYER_DECAY),
        overrides={k: {"weight_decay": 0.0} for k in _NO_DECAY},
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    if name == "SGD":
        return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: use 'ADAMW' or 'SGD'.")
