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

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data.transforms import ResizeTransform
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.utils.events import get_event_storage
from PIL import Image
from torch import nn

from ...errors import UserError
from ..backbone.dino_vit import DinoViTBackbone
from ..criterion import build_set_criterion
from ..postprocessing import MaskFormerInference, semantic_inference
from .mask_classification import (
    MaskClassificationModel,
    mask_classification_benchmark,
    mask_classification_capabilities,
)

__all__ = ["EoMT", "EomtTestProtocol", "adapt_vit_for_eomt", "build_test_protocol",
           "mask_annealing_probs", "window_starts"]

# Masked attention of one block with queries (``EoMT.predict_network``): none, every query
# inside its predicted mask, or each query masked with the block's annealed probability.
MASK_OFF, MASK_ON, MASK_RANDOM = 0, 1, 2


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


def fitted_size(size, side, longer):
    """EoMT's test-time resize: (h, w) scaled so that its longer (``longer``) or shorter side
    becomes ``side``, each side rounded (at least 1 pixel)."""
    factor = side / (max(size) if longer else min(size))
    return tuple(max(1, round(s * factor)) for s in size)


def window_starts(length, side):
    """EoMT's semantic windows along a side of ``length`` >= ``side``: the start offsets of
    ceil(length / side) windows of ``side`` pixels, the first at 0, the last ending at
    ``length``, their overlap spread evenly between them."""
    count = math.ceil(length / side)
    overlap = count * side - length
    step = side - (overlap / (count - 1) if count > 1 and overlap > 0 else 0)
    return [int(j * step) for j in range(count)]


class EomtTestProtocol:
    """EoMT's evaluation protocol (tue-mps/eomt ``training/lightning_module.py``), the way its
    published PQ / AP / mIoU are measured, for the eager model and its exports alike.

    Instance / panoptic (``windows`` False): each image is resized so that its longer side is
    ``size`` (skipped when the test-time mapper already did so, as the configs in configs/eomt/
    do with PIL's bilinear resize, EoMT's), padded at its bottom/right with black pixels (0
    before normalisation, i.e. ``-mean / std`` after) to the ``size`` x ``size`` square, and the
    predictions inside the image resized to the output size by ``postprocessor`` in EoMT's two
    passes (mask logits upsampled to the square, cropped to the image, resized to the output;
    ``two_pass=True``), so that masks, scores and segments equal its evaluation's.
    Semantic (``windows`` True): the shorter side is resized to ``size``; ``size`` x ``size``
    windows at ``window_starts`` along the longer side each give per-pixel class scores
    (``semantic_inference`` on mask logits upsampled to the window, as EoMT does), which are
    averaged where windows overlap and resized bilinearly to the output size.

    Call with detectron2's inputs ("image" (3, h, w) pixel values in INPUT.FORMAT, optional
    "height"/"width": the output size) and ``predict``: normalised (N, 3, size, size) ->
    {"pred_logits" (N, Q, K+1), "pred_masks" (N, Q, h', w')}. Returns per image the output dict
    of ``postprocessor`` (windows: {"sem_seg" (K, H, W)}).

    Where the model resizes itself (the mapper left another size) it resizes as EoMT does:
    PIL's bilinear filter on the pixel values rounded to uint8 (detectron2's
    ``ResizeTransform``), on the CPU.
    """

    def __init__(self, *, size, windows, pixel_mean, pixel_std, postprocessor):
        self.size, self.windows, self.postprocessor = size, windows, postprocessor
        self.pixel_mean = torch.as_tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_std = torch.as_tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1)

    def _resized(self, image, device):
        size = fitted_size(tuple(image.shape[-2:]), self.size, longer=not self.windows)
        if size != tuple(image.shape[-2:]):
            # PIL, as EoMT: a torch resize differs by rounding, which moves mask boundaries.
            pixels = image.detach().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
            resized = ResizeTransform(*image.shape[-2:], *size, Image.BILINEAR).apply_image(
                pixels.cpu().numpy())
            image = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
        return image.to(device).float()

    def _normalised(self, images):
        return (images - self.pixel_mean.to(images.device)) / self.pixel_std.to(images.device)

    def __call__(self, batched_inputs, predict, device="cpu"):
        out_sizes = [(x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1]))
                     for x in batched_inputs]
        images = [self._resized(x["image"], device) for x in batched_inputs]
        if self.windows:
            return self._windows(images, out_sizes, predict)
        side = self.size
        padded = torch.stack([F.pad(im, (0, side - im.shape[-1], 0, side - im.shape[-2]))
                              for im in images])  # zeros before normalising: black
        out = predict(self._normalised(padded))
        return [self.postprocessor(logits, masks, (side, side), tuple(im.shape[-2:]), size,
                                   two_pass=True)
                for logits, masks, im, size in zip(out["pred_logits"], out["pred_masks"],
                                                   images, out_sizes)]

    def _windows(self, images, out_sizes, predict):
        side = self.size
        crops, origins = [], []
        for i, image in enumerate(images):
            along_h = image.shape[-2] > image.shape[-1]
            for start in window_starts(max(image.shape[-2:]), side):
                crops.append(image[:, start:start + side] if along_h
                             else image[:, :, start:start + side])
                origins.append((i, start, along_h))
        out = predict(self._normalised(torch.stack(crops)))
        sums = [None] * len(images)
        counts = [torch.zeros(im.shape[-2:], device=im.device) for im in images]
        for logits, masks, (i, start, along_h) in zip(out["pred_logits"], out["pred_masks"],
                                                      origins):
            masks = F.interpolate(masks[None].float(), size=(side, side), mode="bilinear",
                                  align_corners=False)[0]
            scores = semantic_inference(logits.float(), masks)
            if sums[i] is None:
                sums[i] = scores.new_zeros((scores.shape[0], *images[i].shape[-2:]))
            window = (slice(None), slice(start, start + side)) if along_h \
                else (slice(None), slice(None), slice(start, start + side))
            sums[i][window] += scores
            counts[i][window[1:]] += 1
        return [{"sem_seg": F.interpolate((total / count)[None], size=tuple(size),
                                          mode="bilinear", align_corners=False)[0]}
                for total, count, size in zip(sums, counts, out_sizes)]


def build_test_protocol(protocol, size, pixel_mean, pixel_std, postprocessor):
    """MODEL.EOMT.TEST.PROTOCOL -> an ``EomtTestProtocol`` ("eomt": windows where the semantic
    output is the only one) or None ("any_size")."""
    if protocol not in ("eomt", "any_size"):
        raise UserError(f"MODEL.EOMT.TEST.PROTOCOL {protocol!r}: choose 'eomt' (EoMT's "
                        "evaluation) or 'any_size' (pad to the patch multiple).")
    if protocol == "any_size":
        return None
    post = postprocessor
    windows = post.semantic_on and not (post.instance_on or post.panoptic_on)
    return EomtTestProtocol(size=size, windows=windows, pixel_mean=pixel_mean,
                            pixel_std=pixel_std, postprocessor=post)


def _export_test_protocol(cfg):
    """An export is fed as the eager model's inference feeds the network."""
    return build_test_protocol(cfg.MODEL.EOMT.TEST.PROTOCOL, cfg.INPUT.IMAGE_SIZE,
                               cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD,
                               MaskFormerInference(cfg))


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

    Inputs and outputs: ``MaskClassificationModel``'s. Inference (MODEL.EOMT.TEST.PROTOCOL):
    "eomt" feeds the network as EoMT's evaluation does (``EomtTestProtocol``: black-padded
    INPUT.IMAGE_SIZE squares, or overlapping windows for semantic); "any_size" pads each image
    only to the patch multiple (never to a square), with the normalised mean: faster, but the
    ViT then sees other inputs than EoMT's published figures were measured on.

    ``predict(images)``: normalised (N, 3, H, W) -> class logits (N, Q, K+1) and mask logits
    (N, Q, 4 * ceil(H / p), 4 * ceil(W / p)) for patch size p (masks at 1/4 resolution).
    Inference: per image a dict with "instances", "sem_seg", "panoptic_seg" as enabled by
    MODEL.MASK_FORMER.TEST.*_ON. Training: the set criterion's losses, deep supervision from
    every block with queries.
    """

    capabilities = mask_classification_capabilities(
        graph_constants=_graph_constants, load_graph_constants=_load_graph_constants,
        test_protocol=_export_test_protocol,
        trained_state=_trained_state, lr_factor_func=lambda model, cfg: model.lr_factor_func(cfg),
        compiled_parts=lambda model: {"network": (model, "predict_network")},
        benchmark=mask_classification_benchmark("hf_eomt", "MODEL.EOMT.NUM_QUERIES",
                                                _benchmark_parts))

    @configurable
    def __init__(self, *, backbone, num_classes, num_queries=100, num_blocks=4,
                 num_upscale_blocks=2, patch_size=0, image_size=0, layer_norm_eps=0.0,
                 criterion=None,
                 postprocessor=None, pixel_mean=(123.675, 116.28, 103.53),
                 pixel_std=(58.395, 57.12, 57.375), anneal_start_iters=(), anneal_end_iters=(),
                 anneal_power=0.9, test_protocol="any_size", test_size=0):
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
        self.test_protocol = self._build_test_protocol(test_protocol, test_size, pixel_mean,
                                                       pixel_std)

    def _build_test_protocol(self, protocol, size, pixel_mean, pixel_std):
        if protocol == "eomt" and (size <= 0 or size % self.patch_size):
            raise UserError(f"INPUT.IMAGE_SIZE {size}: MODEL.EOMT.TEST.PROTOCOL 'eomt' feeds "
                            f"squares of that side, which must be a positive multiple of the "
                            f"patch size {self.patch_size}; set it so or use 'any_size'.")
        if protocol == "eomt" and self.postprocessor is None:
            raise UserError("MODEL.EOMT.TEST.PROTOCOL 'eomt' needs a postprocessor (build the "
                            "model from a config).")
        return build_test_protocol(protocol, size, pixel_mean, pixel_std, self.postprocessor)

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
            "test_protocol": e.TEST.PROTOCOL, "test_size": cfg.INPUT.IMAGE_SIZE,
        }

    def inference(self, batched_inputs):
        if self.test_protocol is None:  # "any_size"
            return super().inference(batched_inputs)
        return self.test_protocol(batched_inputs, self.predict, self.device)

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
        ``prob``: None for probability 1 (no random share), else a 0-dim tensor (a tensor, so
        that a compiled network does not recompile for each value of the annealing)."""
        n, q = mask_logits.shape[:2]
        tokens = q + self.num_prefix_tokens + grid[0] * grid[1]
        mask = torch.ones(n, tokens, tokens, dtype=torch.bool, device=mask_logits.device)
        inside = F.interpolate(mask_logits, size=grid, mode="bilinear").flatten(2) > 0
        if prob is not None:
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
        (a graph export fixes them, as it cannot branch on a buffer's contents).

        The network itself runs in ``predict_network`` (what MODEL.COMPILE compiles): the
        probabilities' values are read here, as a graph cannot branch on them either."""
        probs = self.attn_mask_probs.tolist() if attn_mask_probs is None else attn_mask_probs
        modes = tuple(MASK_OFF if p <= 0 else MASK_ON if p >= 1 else MASK_RANDOM for p in probs)
        values = None
        if MASK_RANDOM in modes:
            values = self.attn_mask_probs if attn_mask_probs is None else torch.tensor(
                probs, dtype=torch.float32, device=images.device)
        return self.predict_network(images, modes, values)

    def predict_network(self, images, modes, probs=None):
        """``predict`` with the masked attention of each block with queries given as ``modes``
        (MASK_OFF, MASK_ON, or MASK_RANDOM: each query unmasked with probability 1 - ``probs``
        [block], a tensor) -> ``predict``'s outputs. Free of graph breaks: ``torch.compile``
        traces it whole, and recompiles only when ``modes`` change (a few times in training)."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        x = self.vit.embeddings(images)
        extra = {"position_embeddings": self.vit.rope_embeddings(images)} if self.is_dinov3 \
            else {}
        first_query_block = len(self.blocks) - self.num_blocks
        aux = []
        for i, block in enumerate(self.blocks):
            mask = None
            if i == first_query_block:
                x = torch.cat([self.query.weight.expand(x.shape[0], -1, -1), x], dim=1)
            j = i - first_query_block
            if j >= 0 and (self.training or modes[j] != MASK_OFF):
                # Predict from the current tokens: deep supervision and the attention mask.
                mask_logits, class_logits = self._predict_heads(self.final_norm(x), grid)
                aux.append({"pred_logits": class_logits, "pred_masks": mask_logits})
                if modes[j] != MASK_OFF:
                    mask = self._attention_mask(
                        mask_logits, grid, probs[j] if modes[j] == MASK_RANDOM else None)
            x = block(x, attention_mask=mask, **extra)
        mask_logits, class_logits = self._predict_heads(self.final_norm(x), grid)
        out = {"pred_logits": class_logits, "pred_masks": mask_logits}
        if self.training:
            out["aux_outputs"] = aux
        return out

    def training_outputs(self, images):
        self._update_mask_probs()
        return self.predict(images)
