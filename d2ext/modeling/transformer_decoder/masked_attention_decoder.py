"""Mask2Former's transformer decoder: queries cross-attend to one pixel-decoder scale per layer,
each restricted (masked attention) to the foreground its previous mask prediction."""
import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from ..mask_ops import FactoredMaskLogits
from ..position_encoding import sine_position_embedding

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """Transformer decoders of Mask2Former-style models, named
by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME and built with (cfg, in_channels)."""


class DecoderLayer(nn.Module):
    """Masked cross-attention to pixels, self-attention among queries, MLP; each residual and
    followed by LayerNorm (or preceded, with ``pre_norm``). Queries (B, Q, C) -> (B, Q, C)."""

    def __init__(self, dim, nheads, dim_feedforward, dropout=0.0, pre_norm=False):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(dim_feedforward, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        # Mask2Former's init: xavier for every matrix (attention projections and MLP).
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _residual(self, x, i, fn):
        if self.pre_norm:
            return x + self.dropout(fn(self.norms[i](x)))
        return self.norms[i](x + self.dropout(fn(x)))

    def forward(self, queries, query_pos, memory, memory_pos, attn_mask):
        queries = self._residual(queries, 0, lambda q: self.cross_attn(
            q + query_pos, memory + memory_pos, memory, attn_mask=attn_mask,
            need_weights=False)[0])
        queries = self._residual(queries, 1, lambda q: self.self_attn(
            q + query_pos, q + query_pos, q, need_weights=False)[0])
        return self._residual(queries, 2, self.ffn)


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """forward(multi_scale_features: list of (B, in_channels, h_i, w_i), coarsest first;
    mask_features (B, mask_dim, H/4, W/4)) -> {"pred_logits": (B, Q, K+1), "pred_masks":
    (B, Q, H/4, W/4), "aux_outputs": the same two keys for each earlier prediction (training)}.
    In training the mask logits are ``FactoredMaskLogits`` (the mask embeddings and
    ``mask_features``), which the set criterion reads without the full product.

    ``dec_layers`` attention layers cycle through the 3 scales. A prediction is made from the
    learned queries alone and after every layer; each one's mask (> 0.5 after sigmoid), at the
    next layer's scale, masks that layer's cross-attention. Layers, init and outputs are those of
    Mask2Former's ``MultiScaleMaskedTransformerDecoder``.
    """

    @configurable
    def __init__(self, *, in_channels, num_classes, hidden_dim=256, num_queries=100, nheads=8,
                 dim_feedforward=2048, dec_layers=9, pre_norm=False, mask_dim=256,
                 enforce_input_project=False, dropout=0.0):
        super().__init__()
        self.num_heads = nheads
        num_feature_levels = self.num_feature_levels = 3  # Mask2Former always uses 3 scales
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
            for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
            if in_channels != hidden_dim or enforce_input_project else nn.Identity()
            for _ in range(num_feature_levels))
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                weight_init.c2_xavier_fill(proj)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, mask_dim))

    @classmethod
    def from_config(cls, cfg, in_channels):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS = {mf.DEC_LAYERS}; it counts the "
                             "initial prediction too, so it must be >= 1 (Mask2Former uses 10).")
        return {"in_channels": in_channels, "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                "hidden_dim": mf.HIDDEN_DIM, "num_queries": mf.NUM_OBJECT_QUERIES,
                "nheads": mf.NHEADS, "dim_feedforward": mf.DIM_FEEDFORWARD,
                # Mask2Former's count includes the prediction from the bare queries.
                "dec_layers": mf.DEC_LAYERS - 1, "pre_norm": mf.PRE_NORM,
                "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
                "enforce_input_project": mf.ENFORCE_INPUT_PROJ, "dropout": mf.DROPOUT}

    def _predict(self, queries, mask_features, attn_features, full_masks, shared=None):
        """Class logits, full-resolution mask logits (if ``full_masks``; in training their
        ``FactoredMaskLogits``) and the attention mask for the next layer (B * heads, Q, h * w;
        True = blocked), read from ``attn_features``."""
        x = self.decoder_norm(queries)
        logits = self.class_embed(x)
        embed = self.mask_embed(x)
        masks = None
        if full_masks:
            # The criterion takes the factors: it needs the full maps of matched queries only.
            masks = FactoredMaskLogits(embed, mask_features, shared) if self.training else \
                torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        attn_mask = None
        if attn_features is not None:
            # Bilinear downsampling commutes with the (linear) einsum, so masks at the attention
            # scale come from pre-downsampled features: Q x C x (h w) instead of Q x C x (H W).
            # Mask2Former downsamples the full-resolution masks instead: equal up to rounding
            # (a logit within rounding of 0 can flip its pixel of the attention mask).
            small = torch.einsum("bqc,bchw->bqhw", embed.detach(), attn_features).flatten(2)
            attn_mask = (small.sigmoid() < 0.5).detach()
            # A query whose mask is empty would attend to nothing: let it see everything.
            attn_mask[attn_mask.all(-1)] = False
            attn_mask = attn_mask.repeat_interleave(self.num_heads, dim=0)
        return logits, masks, attn_mask

    def forward(self, multi_scale_features, mask_features):
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got "
                             f"{len(multi_scale_features)}")
        memories, memory_pos, attn_features = [], [], []
        for i, x in enumerate(multi_scale_features):
            memory = self.input_proj[i](x) + self.level_embed.weight[i][:, None, None]
            pos = sine_position_embedding(memory.shape, memory.shape[1] // 2, x.device, x.dtype)
            memory_pos.append(pos.flatten(2).transpose(1, 2))
            memories.append(memory.flatten(2).transpose(1, 2))
            # Only thresholded: no gradient flows through the attention masks.
            attn_features.append(F.interpolate(mask_features.detach(), size=x.shape[-2:],
                                               mode="bilinear", align_corners=False))
        b = mask_features.shape[0]
        queries = self.query_feat.weight[None].expand(b, -1, -1)
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        n_levels = self.num_feature_levels

        training = self.training
        shared = {}  # what the training predictions' FactoredMaskLogits share
        predictions = []
        logits, masks, attn_mask = self._predict(
            queries, mask_features, attn_features[0] if self.layers else None,
            training or not self.layers, shared)
        predictions.append((logits, masks))
        for i, layer in enumerate(self.layers):
            level = i % n_levels
            queries = layer(queries, query_pos, memories[level], memory_pos[level], attn_mask)
            last = i == len(self.layers) - 1
            logits, masks, attn_mask = self._predict(
                queries, mask_features, None if last else attn_features[(i + 1) % n_levels],
                training or last, shared)
            predictions.append((logits, masks))
        out = {"pred_logits": predictions[-1][0], "pred_masks": predictions[-1][1]}
        if training:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_masks": m}
                                  for lg, m in predictions[:-1]]
        return out
