"""Encoder-only Mask Transformer (EoMT): the DINO ViT itself segments.

Learnable queries join the ViT's tokens for its last ``num_blocks`` blocks; a light upscaler
turns the patch tokens into a 1/4-resolution pixel embedding; each query gives class logits and,
by a dot product with that embedding, a mask. During training each of those blocks first predicts
masks and lets a query attend only inside its predicted mask (masked attention); the probability
of applying that mask is annealed per block to 0, so a trained model runs as a plain ViT.

The math equals transformers' ``EomtForUniversalSegmentation`` (DINOv2 family) and
``EomtDinov3ForUniversalSegmentation``: ``tools/convert_hf_eomt.py`` turns their weights into a
checkpoint of this model.
"""
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.utils.events import get_event_storage
from torch import nn

from ..backbone.dino_vit import DinoViTBackbone
from ..criterion import build_set_criterion
from ..postprocessing import MaskFormerInference
from .mask_classification import (
    MaskClassificationModel,
    mask_classification_benchmark,
    mask_classification_capabilities,
)

__all__ = ["EoMT", "adapt_vit_for_eomt", "mask_annealing_probs"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class ScaleLayer(nn.Module):
    """x2 upsampling: transposed conv 2x2 -> activation -> depthwise 3x3 -> LayerNorm2d."""

    def __init__(self, dim, activation):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.activation = activation
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.layernorm2d = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x):
        return self.layernorm2d(self.conv2(self.activation(self.conv1(x))))


class ScaleBlock(nn.Module):
    """``num_layers`` ScaleLayers: (N, C, h, w) -> (N, C, h * 2**num_layers, w * 2**num_layers).

    With ``mask_embed`` (N, Q, C), returns the mask logits ``einsum("bqc,bchw->bqhw",
    mask_embed, upscaled)`` instead."""

    def __init__(self, dim, num_layers, activation):
        super().__init__()
        self.block = nn.ModuleList([ScaleLayer(dim, activation) for _ in range(num_layers)])

    def forward(self, x, mask_embed=None):
        for layer in self.block:
            x = layer(x)
        if mask_embed is None:
            return x
        return torch.einsum("bqc,bchw->bqhw", mask_embed, x)


class MaskHead(nn.Module):
    """3-layer MLP: query tokens (N, Q, C) -> mask embeddings (N, Q, C)."""

    def __init__(self, dim, activation):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(dim, dim) for _ in range(3))
        self.activation = activation

    def forward(self, x):
        return self.fc3(self.activation(self.fc2(self.activation(self.fc1(x)))))


def mask_annealing_probs(iteration, start_iters, end_iters, power=0.9):
    """Per-block probability of masked attention at ``iteration``: 1 before the block's start,
    0 from its end on, polynomial decay ``(1 - progress) ** power`` in between (EoMT's
    schedule). Returns a list of floats, one per block with queries."""
    probs = []
    for start, end in zip(start_iters, end_iters):
        if iteration < start:
            probs.append(1.0)
        elif iteration >= end:
            probs.append(0.0)
        else:
            probs.append((1.0 - (iteration - start) / (end - start)) ** power)
    return probs


def adapt_vit_for_eomt(backbone, patch_size=0, image_size=0):
    """Give a DINOv2-family ViT the patch size and absolute position grid EoMT uses.

    EoMT runs DINOv2 at patch 16 with position embeddings on an ``image_size / 16`` grid
    (transformers' EoMT checkpoints have that shape). ``patch_size`` 0 keeps the ViT's own;
    otherwise the patch kernel is resampled (bilinearly, so pretrained weights stay usable).
    ``image_size`` 0 keeps the position grid; otherwise the position embeddings are resampled
    (bicubic) to ``image_size // patch`` per side. DINOv3 (RoPE) has no grid and needs neither.
    Returns the patch size in use.
    """
    vit = backbone.vit
    patch = patch_size or backbone.arch.patch
    if backbone.arch.family == "dinov3":
        if patch != backbone.arch.patch:
            raise ValueError(f"MODEL.EOMT.PATCH_SIZE={patch_size}: DINOv3 ViTs keep their patch "
                             f"size {backbone.arch.patch}; set 0.")
        return patch
    embed = vit.embeddings.patch_embeddings
    if patch != embed.patch_size[0]:
        old = embed.projection
        new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=patch, stride=patch)
        with torch.no_grad():
            new.weight.copy_(F.interpolate(old.weight, size=(patch, patch), mode="bilinear",
                                           align_corners=False)
                             * (embed.patch_size[0] / patch) ** 2)
            new.bias.copy_(old.bias)
        embed.projection = new
        embed.patch_size = (patch, patch)
        vit.config.patch_size = patch
    if image_size:
        pos = vit.embeddings.position_embeddings
        grid = image_size // patch
        old_grid = math.isqrt(pos.shape[1] - 1)
        if grid != old_grid:
            patch_pos = pos[:, 1:].reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(patch_pos.float(), size=(grid, grid), mode="bicubic",
                                      align_corners=False, antialias=True)
            new_pos = torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2)], dim=1)
            vit.embeddings.position_embeddings = nn.Parameter(new_pos.detach())
            vit.config.image_size = image_size
    return patch


def _graph_constants(model):
    """A graph cannot branch on a buffer's values: it fixes the masked-attention
    probabilities, which must be 0 or 1 (random masking in between cannot be reproduced)."""
    probs = model.attn_mask_probs.tolist()
    if any(0 < p < 1 for p in probs):
        raise ValueError(
            f"EoMT's attn_mask_probs {probs} (saved with the checkpoint) lie between 0 and 1: "
            "masked attention is then random per query, which a graph cannot reproduce; export "
            "a checkpoint from before or after the annealing (MODEL.EOMT.ANNEAL_START_ITERS / "
            "ANNEAL_END_ITERS).")
    return {"attn_mask_probs": probs}


def _load_graph_constants(model, constants):
    if "attn_mask_probs" in constants:
        model.attn_mask_probs.copy_(torch.tensor(constants["attn_mask_probs"]))


def _trained_state(model):
    model.attn_mask_probs.zero_()  # annealing ends with masked attention off


def _benchmark_parts(model):
    return ({"upscaler + mask logits (EoMT)": model.upscale_block,
             "mask head (EoMT)": model.mask_head}, {"post-processing": "postprocess"})


@META_ARCH_REGISTRY.register()
class EoMT(MaskClassificationModel):
    """Encoder-only Mask Transformer on a DINOv2 / DINOv3 ViT (``DinoViTBackbone``).

    Inputs and outputs: ``MaskClassificationModel``'s. Any H, W: images are padded only to the
    patch multiple (never to a square).

    ``predict(images)``: normalised (N, 3, H, W) -> class logits (N, Q, K+1) and mask logits
    (N, Q, 4 * ceil(H / p), 4 * ceil(W / p)) for patch size p (masks at 1/4 resolution).
    Inference: per image a dict with "instances", "sem_seg", "panoptic_seg" as enabled by
    MODEL.MASK_FORMER.TEST.*_ON. Training: the set criterion's losses, deep supervision from
    every block with queries.
    """

    capabilities = mask_classification_capabilities(
        graph_constants=_graph_constants, load_graph_constants=_load_graph_constants,
        trained_state=_trained_state, lr_factor_func=lambda model, cfg: model.lr_factor_func(cfg),
        benchmark=mask_classification_benchmark("hf_eomt", "MODEL.EOMT.NUM_QUERIES",
                                                _benchmark_parts))

    @configurable
    def __init__(self, *, backbone, num_classes, num_queries=100, num_blocks=4,
                 num_upscale_blocks=2, patch_size=0, image_size=0, layer_norm_eps=0.0,
                 criterion=None,
                 postprocessor=None, pixel_mean=(123.675, 116.28, 103.53),
                 pixel_std=(58.395, 57.12, 57.375), anneal_start_iters=(), anneal_end_iters=(),
                 anneal_power=0.9):
        super().__init__(criterion=criterion, postprocessor=postprocessor, pixel_mean=pixel_mean,
                         pixel_std=pixel_std, size_divisibility=1)
        if not isinstance(backbone, DinoViTBackbone):
            raise ValueError("EoMT needs MODEL.BACKBONE.NAME 'build_dino_vit_backbone' (the bare "
                             f"DINO ViT); got {type(backbone).__name__}.")
        depth = backbone.num_blocks
        if not 1 <= num_blocks <= depth:
            raise ValueError(f"MODEL.EOMT.NUM_BLOCKS={num_blocks}: must lie in [1, {depth}] "
                             f"(the ViT has {depth} blocks).")
        if len(anneal_start_iters) != len(anneal_end_iters) or \
                len(anneal_start_iters) not in (0, num_blocks):
            raise ValueError("MODEL.EOMT.ANNEAL_START_ITERS / ANNEAL_END_ITERS: give one "
                             f"iteration per block with queries ({num_blocks}) in each, or none "
                             "(keep the attention-mask probabilities as loaded).")
        self.backbone = backbone
        self.is_dinov3 = backbone.arch.family == "dinov3"
        self.patch_size = adapt_vit_for_eomt(backbone, patch_size, image_size)
        if layer_norm_eps:
            for m in self.vit.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eps = layer_norm_eps
        self.num_prefix_tokens = backbone.arch.num_prefix_tokens
        self.num_queries, self.num_blocks = num_queries, num_blocks
        width = backbone.arch.width
        from transformers.activations import ACT2FN  # with the ViT: `import d2ext` stays light

        activation = ACT2FN[self.vit.config.hidden_act]  # the head uses the ViT's, as EoMT does
        self.query = nn.Embedding(num_queries, width)
        self.upscale_block = ScaleBlock(width, num_upscale_blocks, activation)
        self.mask_head = MaskHead(width, activation)
        self.class_predictor = nn.Linear(width, num_classes + 1)
        # Probability that block i (of the last num_blocks) masks its queries' attention; saved
        # with the model: a trained EoMT has all zeros and then runs without any masks.
        self.register_buffer("attn_mask_probs", torch.ones(num_blocks))
        self.anneal = (tuple(anneal_start_iters), tuple(anneal_end_iters), anneal_power)
        self.size_divisibility = self.patch_size

    @classmethod
    def from_config(cls, cfg):
        e = cfg.MODEL.EOMT
        return {
            "backbone": build_backbone(cfg), "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "num_queries": e.NUM_QUERIES, "num_blocks": e.NUM_BLOCKS,
            "num_upscale_blocks": e.NUM_UPSCALE_BLOCKS, "patch_size": e.PATCH_SIZE,
            "image_size": e.IMAGE_SIZE, "layer_norm_eps": e.LAYER_NORM_EPS,
            "criterion": build_set_criterion(cfg),
            "postprocessor": MaskFormerInference(cfg), "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD, "anneal_start_iters": e.ANNEAL_START_ITERS,
            "anneal_end_iters": e.ANNEAL_END_ITERS, "anneal_power": e.ANNEAL_POWER,
        }

    def lr_factor_func(self, cfg):
        """EoMT's layer-wise LR decay (d2ext.solver reads it): block i of the ViT's L gets
        MODEL.DINO.LAYER_DECAY ** (L - 1 - i) and the embeddings LAYER_DECAY ** (L - 1), while
        the last NUM_BLOCKS blocks (which also process the queries), the final norm and the head
        keep the full LR; backbone factors are times SOLVER.BACKBONE_MULTIPLIER."""
        vit, decay = self.backbone, cfg.MODEL.DINO.LAYER_DECAY
        full_lr_from = vit.num_blocks - self.num_blocks + 1  # layer id of the first query block

        def factor(name):
            if not name.startswith("backbone.vit."):
                return 1.0
            layer_id = vit.layer_id(name[len("backbone.vit."):])
            exponent = 0 if layer_id >= full_lr_from else vit.num_blocks - max(layer_id, 1)
            return cfg.SOLVER.BACKBONE_MULTIPLIER * decay ** exponent

        return factor

    @property
    def vit(self):
        """The transformers ViT (DINOv2: ``Dinov2[WithRegisters]Model``; DINOv3:
        ``DINOv3ViTModel``)."""
        return self.backbone.vit

    @property
    def blocks(self):
        return self.backbone.blocks

    @property
    def final_norm(self):
        return self.backbone.final_norm

    def _predict_heads(self, tokens, grid):
        """Normed tokens (N, Q + prefix + h*w, C) -> (mask logits (N, Q, 4h, 4w), class logits)."""
        queries = tokens[:, : self.num_queries]
        patches = tokens[:, self.num_queries + self.num_prefix_tokens:]
        # (N, C, h, w) in channels-last memory: a view of the tokens, no copy; the upscaler's
        # convolutions and channel LayerNorms then run without layout conversions.
        patches = patches.reshape(tokens.shape[0], *grid, -1).permute(0, 3, 1, 2)
        masks = self.upscale_block(patches, self.mask_head(queries))
        return masks, self.class_predictor(queries)

    def _attention_mask(self, mask_logits, grid, prob):
        """Boolean (N, 1, T, T) mask, True = may attend: queries see only the patches inside
        their predicted mask, except a random (1 - prob) share of queries that see everything.
        """
        n, q = mask_logits.shape[:2]
        tokens = q + self.num_prefix_tokens + grid[0] * grid[1]
        mask = torch.ones(n, tokens, tokens, dtype=torch.bool, device=mask_logits.device)
        inside = F.interpolate(mask_logits, size=grid, mode="bilinear").flatten(2) > 0
        if prob < 1:
            inside |= (torch.rand(n, q, device=mask_logits.device) > prob)[..., None]
        mask[:, :q, q + self.num_prefix_tokens:] = inside
        return mask[:, None]

    def _update_mask_probs(self):
        starts, ends, power = self.anneal
        if not starts:
            return
        try:
            iteration = get_event_storage().iter
        except AssertionError:  # not inside a detectron2 trainer: keep the current probabilities
            return
        self.attn_mask_probs.copy_(torch.tensor(mask_annealing_probs(iteration, starts, ends,
                                                                     power)))

    def predict(self, images, attn_mask_probs=None):
        """Normalised (N, 3, H, W), H and W multiples of the patch size -> {"pred_logits"
        (N, Q, K+1), "pred_masks" (N, Q, 4H/p, 4W/p)} and, in training, "aux_outputs": the
        predictions made before each block with queries.

        ``attn_mask_probs``: one float per block with queries, in place of the buffer's values
        (a graph export fixes them, as it cannot branch on a buffer's contents)."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        x = self.vit.embeddings(images)
        extra = {"position_embeddings": self.vit.rope_embeddings(images)} if self.is_dinov3 \
            else {}
        first_query_block = len(self.blocks) - self.num_blocks
        probs = self.attn_mask_probs.tolist() if attn_mask_probs is None else attn_mask_probs
        aux = []
        for i, block in enumerate(self.blocks):
            mask = None
            if i == first_query_block:
                x = torch.cat([self.query.weight.expand(x.shape[0], -1, -1), x], dim=1)
            if i >= first_query_block and (self.training or probs[i - first_query_block] > 0):
                # Predict from the current tokens: deep supervision and the attention mask.
                mask_logits, class_logits = self._predict_heads(self.final_norm(x), grid)
                aux.append({"pred_logits": class_logits, "pred_masks": mask_logits})
                prob = probs[i - first_query_block]
                if prob > 0:
                    mask = self._attention_mask(mask_logits, grid, prob)
            x = block(x, attention_mask=mask, **extra)
        mask_logits, class_logits = self._predict_heads(self.final_norm(x), grid)
        out = {"pred_logits": class_logits, "pred_masks": mask_logits}
        if self.training:
            out["aux_outputs"] = aux
        return out

    def training_outputs(self, images):
        self._update_mask_probs()
        return self.predict(images)
