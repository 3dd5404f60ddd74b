"""Optimizer and LR schedule for DINO-backbone models: backbone LR multiplier, layer-wise LR
decay, Mask2Former's whole-model gradient clipping and EoMT's two-stage warm-up."""
import torch
from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from torch import nn

from .modeling.backbone.dino_convnext import DinoConvNextBackbone
from .modeling.backbone.dino_vit import DinoViTBackbone
from .modeling.meta_arch import capabilities

# Token and position parameters get no weight decay, as in DINO's and ViTDet's recipes.
_NO_DECAY = ("cls_token", "register_tokens", "position_embeddings")


def dino_lr_factor_func(model, backbone_multiplier=1.0, layer_decay=1.0):
    """name -> LR factor: ``backbone_multiplier * layer_decay ** (depth + 1 - layer_id)`` for the
    DINO ViT's parameters (embeddings: layer 0, block i: i + 1, final norm: depth + 1),
    ``backbone_multiplier`` for a DINOv3 ConvNeXt's (no layer-wise decay over its stages) and
    1.0 for everything else (neck, heads)."""
    vits = {(name + "." if name else "") + "vit.": m
            for name, m in model.named_modules() if isinstance(m, DinoViTBackbone)}
    convnexts = tuple((name + "." if name else "") + "convnext."
                      for name, m in model.named_modules() if isinstance(m, DinoConvNextBackbone))

    def factor(name):
        for prefix, vit in vits.items():
            if name.startswith(prefix):
                layer_id = vit.layer_id(name[len(prefix):])
                return backbone_multiplier * layer_decay ** (vit.num_blocks + 1 - layer_id)
        if convnexts and name.startswith(convnexts):
            return backbone_multiplier
        return 1.0

    return factor


def add_full_model_gradient_clipping(optimizer_cls, max_norm, norm_type=2.0):
    """``optimizer_cls`` whose ``step`` first clips the norm of all gradients together to
    ``max_norm``: Mask2Former's ``full_model`` clip type (detectron2 clips per parameter)."""

    class FullModelGradientClipping(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = optimizer_cls.__name__ + "WithFullModelGradientClipping"
    return FullModelGradientClipping


def optimizer_param_groups(cfg, model):
    """``get_default_optimizer_params`` groups of the backbone and of the rest, kept apart (each
    group has "backbone": bool) so that schedules can treat them differently. The LR factors
    are the model's own (its capabilities' ``lr_factor_func``) if it declares them, else
    ``dino_lr_factor_func``."""
    factor = capabilities(model).lr_factor_func(model, cfg) or dino_lr_factor_func(
        model, cfg.SOLVER.BACKBONE_MULTIPLIER, cfg.MODEL.DINO.LAYER_DECAY)
    parts = {"backbone": {n: m for n, m in model.named_children() if n == "backbone"},
             "rest": {n: m for n, m in model.named_children() if n != "backbone"}}
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups = []
    for part, children in parts.items():
        if not children:
            continue
        part_groups = get_default_optimizer_params(
            nn.ModuleDict(children), base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS, lr_factor_func=factor,
            overrides={k: {"weight_decay": 0.0} for k in _NO_DECAY})
        for g in part_groups:  # nn.Embedding weights get SOLVER.WEIGHT_DECAY_EMBED (Mask2Former)
            embed = [p for p in g["params"] if id(p) in embeddings]
            rest = [p for p in g["params"] if id(p) not in embeddings]
            groups += [dict(g, params=ps, backbone=part == "backbone", **extra)
                       for ps, extra in ((rest, {}),
                                         (embed, {"weight_decay": cfg.SOLVER.WEIGHT_DECAY_EMBED}))
                       if ps]
    grouped = sum(len(g["params"]) for g in groups)
    trainable = sum(p.requires_grad for p in set(model.parameters()))
    if grouped != trainable:
        raise RuntimeError(f"{type(model).__name__}: {trainable - grouped} trainable parameters "
                           "are not inside a child module; the optimizer would miss them.")
    return groups


def build_optimizer(cfg, model):
    """AdamW or SGD over ``optimizer_param_groups``, with SOLVER.CLIP_GRADIENTS: detectron2's
    "value" / "norm" clip types, or "full_model" (Mask2Former's)."""
    params = optimizer_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM,
                                        "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: use 'ADAMW' or 'SGD'.")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        cls = add_full_model_gradient_clipping(cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        cls = maybe_add_gradient_clipping(cfg, cls)
    return cls(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)


def two_stage_warmup_poly(head_warmup, backbone_warmup, max_iter, power, backbone):
    """EoMT's LR factor at iteration t: the head warms up linearly over ``head_warmup``
    iterations while the backbone waits at 0, then the backbone warms up over
    ``backbone_warmup``; after its warm-up each decays as (1 - progress) ** ``power`` to 0 at
    ``max_iter``."""
    start = head_warmup if backbone else 0
    warmup = backbone_warmup if backbone else head_warmup

    def factor(t):
        if t < start:
            return 0.0
        if t < start + warmup:
            return (t - start) / warmup
        done = min(1.0, (t - start - warmup) / max(1, max_iter - start - warmup))
        return (1.0 - done) ** power

    return factor


def build_lr_scheduler(cfg, optimizer):
    """SOLVER.LR_SCHEDULER_NAME "TwoStageWarmupPoly" (EoMT's: SOLVER.WARMUP_ITERS for the head,
    then SOLVER.BACKBONE_WARMUP_ITERS for the backbone, poly SOLVER.POLY_LR_POWER), or any of
    detectron2's schedules."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "TwoStageWarmupPoly":
        return build_detectron2_lr_scheduler(cfg, optimizer)
    s = cfg.SOLVER
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [
        two_stage_warmup_poly(s.WARMUP_ITERS, s.BACKBONE_WARMUP_ITERS, s.MAX_ITER,
                              s.POLY_LR_POWER, g.get("backbone", False))
        for g in optimizer.param_groups])
