"""Meta's original DINOv2 / DINOv3 checkpoints (ViTs and DINOv3's ConvNeXts) in transformers'
layout.

The files facebookresearch/dinov2's torch.hub downloads (``dinov2_vits14_pretrain.pth``,
``dinov2_vitb14_reg4_pretrain.pth``, ...) and DINOv3's download links
(``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``, ...) hold the state dict of Meta's
``DinoVisionTransformer``. ``convert_meta_dino`` maps it onto transformers' ``Dinov2Model``,
``Dinov2WithRegistersModel`` or ``DINOv3ViTModel`` (transformers ships no importable key map for
them). One map per family:

- tokens: ``cls_token``; DINOv2 ``register_tokens`` and DINOv3 ``storage_tokens`` are the
  register tokens (both models order them cls, registers, patches); ``mask_token`` (DINOv3 keeps
  it as (1, C), transformers as (1, 1, C)); DINOv2's learned ``pos_embed``.
- ``patch_embed.proj`` -> the patch embedding convolution.
- per block (``blocks.i.`` or, in chunked checkpoints, ``blocks.c.i.``): the fused ``attn.qkv``
  is split into query, key and value; ``attn.proj`` -> ``o_proj``; layer scale ``ls1/ls2.gamma``
  -> ``layer_scale1/2.lambda1``; the MLP: ``fc1``/``fc2`` (DINOv3: up/down projections), or
  SwiGLU: DINOv2's fused ``w12`` splits into gate and up projections, DINOv3's ``w1``/``w2``/
  ``w3`` are gate/up/down.
- DINOv3's key bias is masked (``attn.qkv.bias_mask`` zeroes it: transformers' model has no key
  bias); the masked bias is what is converted, and a key bias that the mask leaves non-zero is
  refused. The 7B has no q/k/v bias at all.
- DINOv3's ``rope_embed.periods`` are checked against the periods transformers computes
  (``rope_theta`` = 100, the base of every published model) rather than loaded.
- ConvNeXt (``convert_meta_convnext``): ``downsample_layers.i`` (stem conv + norm, then norm +
  conv per later stage) -> ``model.stages.i.downsample_layers``; ``stages.i.j`` ``dwconv``,
  ``norm``, ``pwconv1``, ``pwconv2``, ``gamma`` -> ``model.stages.i.layers.j`` depthwise_conv,
  layer_norm, pointwise_conv1, pointwise_conv2, gamma; ``norm`` -> ``layer_norm``.
- DINOv3's ``cls_norm`` / ``local_cls_norm`` (the 7B's and the SAT-493M ViT-L's untied norms)
  normalise only the class and register tokens (``local_cls_norm`` only local crops in
  pre-training); the patch tokens, all that d2ext's backbones use, get ``norm``. They are left
  out and reported as unused.
"""
import re

import torch

from ...errors import UserError

# The one key every Meta ViT checkpoint has; what precedes it is a wrapper's prefix.
META_PATCH_KEY = "patch_embed.proj.weight"
META_CONVNEXT_STEM_KEY = "downsample_layers.0.0.weight"
_BLOCK = re.compile(r"blocks\.(?:\d+\.)?(\d+)\.(.+)")  # blocks.i.x or chunked blocks.c.i.x
# DINOv3's RoPE base in every published model (transformers' DINOv3ViTConfig.rope_theta).
DINOV3_ROPE_BASE = 100.0


class MetaCheckpointError(UserError):
    """A Meta-layout checkpoint that cannot be mapped onto transformers' model."""


def _prefix(state, key, sibling):
    """The prefix P before ``key`` in ``state`` whose P + ``sibling`` is there too, or None."""
    for name in state:
        if name.endswith(key) and f"{name[: -len(key)]}{sibling}" in state:
            return name[: -len(key)]
    return None


def meta_prefix(state):
    """The prefix before Meta's keys ("" for a bare state dict, e.g. "backbone." inside a
    training checkpoint), or None when ``state`` is not in Meta's ViT layout."""
    return _prefix(state, META_PATCH_KEY, "cls_token")


def meta_convnext_prefix(state):
    """As ``meta_prefix``, for Meta's ConvNeXt layout."""
    return _prefix(state, META_CONVNEXT_STEM_KEY, "stages.0.0.dwconv.weight")


_CONVNEXT_BLOCK = re.compile(r"stages\.(\d+)\.(\d+)\.(.+)")
_CONVNEXT_NAMES = {"dwconv": "depthwise_conv", "norm": "layer_norm", "pwconv1": "pointwise_conv1",
                   "pwconv2": "pointwise_conv2", "gamma": "gamma"}


def describe_meta_convnext(state):
    """Stage widths and depths of a Meta-layout ConvNeXt state dict (prefix stripped)."""
    blocks = [tuple(map(int, m.groups()[:2])) for m in map(_CONVNEXT_BLOCK.fullmatch, state) if m]
    depths = tuple(1 + max(j for s, j in blocks if s == stage) for stage in range(4))
    widths = tuple(state[f"stages.{i}.0.dwconv.weight"].shape[0] for i in range(4))
    return dict(widths=widths, depths=depths)


def describe_hf_convnext(model):
    return dict(widths=tuple(model.config.hidden_sizes), depths=tuple(model.config.depths))


def convert_meta_convnext(state):
    """A Meta-layout DINOv3 ConvNeXt state dict (prefix stripped) in the layout of transformers'
    ``DINOv3ConvNextModel``; unknown keys are kept under their own names."""
    out = {}
    for key, value in state.items():
        block = _CONVNEXT_BLOCK.fullmatch(key)
        if block:
            stage, index, rest = block.groups()
            name, _, kind = rest.partition(".")
            out[f"model.stages.{stage}.layers.{index}.{_CONVNEXT_NAMES.get(name, name)}"
                + (f".{kind}" if kind else "")] = value
        elif key.startswith("downsample_layers."):
            out["model.stages." + key[len("downsample_layers."):].replace(
                ".", ".downsample_layers.", 1)] = value
        elif key.startswith("norm."):
            out["layer_" + key] = value
        else:
            out[key] = value
    return out


def meta_family(state):
    """"dinov3", "dinov2_reg" or "dinov2" for a Meta-layout state dict (prefix stripped)."""
    if "storage_tokens" in state or "rope_embed.periods" in state:
        return "dinov3"
    return "dinov2_reg" if "register_tokens" in state else "dinov2"


def describe_meta(state):
    """The architecture a Meta-layout state dict (prefix stripped) holds, in the terms of
    ``describe_hf``: family, width, depth, patch, registers, mlp (hidden width of each MLP
    branch), gated, qkv_bias, and heads where the file fixes it (DINOv3: from its RoPE periods,
    head_dim / 4 of them; DINOv2 files do not record it)."""
    family = meta_family(state)
    width = state["cls_token"].shape[-1]
    blocks = {int(m.group(1)) for m in map(_BLOCK.fullmatch, state) if m}
    first = {m.group(2): state[k] for k, m in ((k, _BLOCK.fullmatch(k)) for k in state)
             if m and int(m.group(1)) == 0}
    gated = "mlp.fc1.weight" not in first
    if not gated:
        mlp = first["mlp.fc1.weight"].shape[0]
    elif "mlp.w12.weight" in first:  # DINOv2's fused SwiGLU
        mlp = first["mlp.w12.weight"].shape[0] // 2
    else:
        mlp = first["mlp.w1.weight"].shape[0]
    registers = state.get("storage_tokens", state.get("register_tokens"))
    desc = dict(family=family, width=width, depth=max(blocks) + 1 if blocks else 0,
                patch=state[META_PATCH_KEY].shape[-1],
                registers=0 if registers is None else registers.shape[1],
                mlp=mlp, gated=gated, qkv_bias="attn.qkv.bias" in first)
    if "rope_embed.periods" in state:
        desc["heads"] = width // (4 * state["rope_embed.periods"].numel())
    return desc


def describe_hf(vit):
    """The same description of a transformers DINOv2 / DINOv3 ViT."""
    config = vit.config
    state = vit.state_dict()
    layer = "model.layer.0." if config.model_type == "dinov3_vit" else "encoder.layer.0."
    gated = f"{layer}mlp.gate_proj.weight" in state
    mlp = state[layer + ("mlp.gate_proj.weight" if gated else "mlp.up_proj.weight"
                         if config.model_type == "dinov3_vit" else "mlp.fc1.weight")].shape[0]
    family = {"dinov3_vit": "dinov3", "dinov2_with_registers": "dinov2_reg"}.get(
        config.model_type, "dinov2")
    return dict(family=family, width=config.hidden_size, depth=config.num_hidden_layers,
                patch=config.patch_size,
                registers=getattr(config, "num_register_tokens", 0) if family != "dinov2" else 0,
                mlp=mlp, gated=gated, qkv_bias=f"{layer}attention.q_proj.bias" in state,
                heads=config.num_attention_heads)


def _convert_block(family, suffix, value, mask, key):
    """transformers' names and tensors for one block parameter ``suffix`` (after ``blocks.i.``)."""
    v3 = family == "dinov3"
    if suffix in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        if kind == "bias" and mask is not None:
            value = value * mask.to(value.dtype)
        q, k, v = value.chunk(3, dim=0)
        if kind == "bias" and v3:
            if k.abs().max() > 0:
                raise MetaCheckpointError(
                    f"{key}: the key bias is not zero after its bias_mask, and transformers' "
                    "DINOv3 has no key bias; this checkpoint is not a published DINOv3 model.")
            return {"attention.q_proj.bias": q, "attention.v_proj.bias": v}
        return {f"attention.{n}_proj.{kind}": t for n, t in zip("qkv", (q, k, v))}
    if suffix.startswith("attn.proj."):
        return {"attention.o_proj." + suffix.rsplit(".", 1)[1]: value}
    if suffix in ("ls1.gamma", "ls2.gamma"):
        return {f"layer_scale{suffix[2]}.lambda1": value}
    if suffix.startswith("mlp.w12."):  # DINOv2's fused SwiGLU: (gate, up) stacked
        gate, up = value.chunk(2, dim=0)
        kind = suffix.rsplit(".", 1)[1]
        return {f"mlp.gate_proj.{kind}": gate, f"mlp.up_proj.{kind}": up}
    names = {"mlp.w1.": "mlp.gate_proj.", "mlp.w2.": "mlp.up_proj.", "mlp.w3.": "mlp.down_proj."}
    if v3:
        names.update({"mlp.fc1.": "mlp.up_proj.", "mlp.fc2.": "mlp.down_proj."})
    for old, new in names.items():
        if suffix.startswith(old):
            return {new + suffix[len(old):]: value}
    return {suffix: value}  # norm1, norm2 and DINOv2's fc1 / fc2 keep their names


def convert_meta_dino(state):
    """A Meta-layout DINOv2 / DINOv3 state dict (prefix stripped) in transformers' layout.
    Keys the map does not know (a classifier head, the untied class-token norms) are kept under
    their own names, so the caller reports them as unused."""
    family = meta_family(state)
    v3 = family == "dinov3"
    layer = "model.layer." if v3 else "encoder.layer."
    top = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
           "pos_embed": "embeddings.position_embeddings",
           "register_tokens": "embeddings.register_tokens",
           "storage_tokens": "embeddings.register_tokens",
           "norm.weight": "norm.weight" if v3 else "layernorm.weight",
           "norm.bias": "norm.bias" if v3 else "layernorm.bias"}
    patch = "embeddings.patch_embeddings." + ("" if v3 else "projection.")
    out = {}
    for key, value in state.items():
        block = _BLOCK.fullmatch(key)
        if block:
            index, suffix = block.groups()
            if suffix.endswith("bias_mask"):
                continue
            mask = state.get(key.replace(".bias", ".bias_mask")) if suffix.endswith(
                "qkv.bias") else None
            for name, tensor in _convert_block(family, suffix, value, mask, key).items():
                out[f"{layer}{index}.{name}"] = tensor
        elif key.startswith("patch_embed.proj."):
            out[patch + key[len("patch_embed.proj."):]] = value
        elif key == "rope_embed.periods":
            _check_rope_periods(value, state["cls_token"].shape[-1])
        elif key == "mask_token" and v3:
            out[top[key]] = value.reshape(1, 1, -1)
        else:
            out[top.get(key, key)] = value
    return out


def _check_rope_periods(periods, width):
    quarter = periods.numel()
    head_dim = 4 * quarter
    expected = DINOV3_ROPE_BASE ** (torch.arange(quarter, dtype=torch.float64) * 4 / head_dim)
    if not torch.allclose(periods.double(), expected, rtol=1e-4):
        raise MetaCheckpointError(
            f"rope_embed.periods are not those of RoPE base {DINOV3_ROPE_BASE:g} "
            f"(head dim {head_dim}): this checkpoint was trained with other RoPE settings "
            "(min/max periods), which transformers' DINOv3ViTModel does not implement.")
