"""transformers' Mask2Former head -> d2ext's ``MSDeformAttnPixelDecoder`` and
``MultiScaleMaskedTransformerDecoder``.

One key map serves both as the checkpoint converter (a ``Mask2FormerForUniversalSegmentation``
state dict, e.g. a published COCO model's head) and as the parity tests' weight copy.
"""
import re

import torch

PIXEL_DECODER = "model.pixel_level_module.decoder."
TRANSFORMER = "model.transformer_module."
CLASS_PREDICTOR = "class_predictor."

# (transformers pattern, d2ext replacement), relative to the pixel decoder.
_PIXEL_DECODER_RULES = [
    (r"input_projections\.(\d+)\.", r"input_proj.\1."),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.\1.norm1."),
    (r"encoder\.layers\.(\d+)\.self_attn\.", r"encoder.\1.self_attn."),
    (r"encoder\.layers\.(\d+)\.fc1\.", r"encoder.\1.ffn.0."),
    (r"encoder\.layers\.(\d+)\.fc2\.", r"encoder.\1.ffn.3."),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.\1.norm2."),
    (r"mask_projection\.", "mask_features."),
    (r"level_embed$", "level_embed"),
]
# Relative to the transformer module; each decoder layer's self-attention q/k/v are stacked
# separately (nn.MultiheadAttention keeps them as one in_proj).
_TRANSFORMER_RULES = [
    (r"queries_embedder\.", "query_embed."),
    (r"queries_features\.", "query_feat."),
    (r"level_embed\.", "level_embed."),
    (r"input_projections\.(\d+)\.", r"input_proj.\1."),
    (r"decoder\.layernorm\.", "decoder_norm."),
    (r"decoder\.layers\.(\d+)\.cross_attn\.", r"layers.\1.cross_attn."),
    (r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"layers.\1.norms.0."),
    (r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"layers.\1.self_attn.out_proj."),
    (r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"layers.\1.norms.1."),
    (r"decoder\.layers\.(\d+)\.fc1\.", r"layers.\1.ffn.0."),
    (r"decoder\.layers\.(\d+)\.fc2\.", r"layers.\1.ffn.3."),
    (r"decoder\.layers\.(\d+)\.final_layer_norm\.", r"layers.\1.norms.2."),
]
_QKV = re.compile(r"decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_MASK_MLP = re.compile(r"decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.(weight|bias)$")
_FPN = re.compile(r"(adapter|layer)_(\d+)\.(\d+)\.(weight|bias)$")


def _apply(rules, key):
    for pattern, repl in rules:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return None


def _fpn_key(key, num_fpn_levels):
    # transformers numbers the FPN steps fine -> coarse from 1 and keeps (conv, GroupNorm[, ReLU])
    # in a Sequential; d2ext's are coarse -> fine, detectron2 Conv2d with a .norm.
    m = _FPN.match(key)
    if m is None:
        return None
    kind, idx, part, name = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    convs = "lateral_convs" if kind == "adapter" else "output_convs"
    j = num_fpn_levels - idx
    return f"{convs}.{j}.{name}" if part == "0" else f"{convs}.{j}.norm.{name}"


def convert_hf_mask2former(state_dict, pixel_decoder_prefix="pixel_decoder.",
                           transformer_prefix="transformer_decoder."):
    """A ``Mask2FormerForUniversalSegmentation`` state dict -> (d2ext state dict, unused keys).

    The pixel decoder's keys (``model.pixel_level_module.decoder.*``) go under
    ``pixel_decoder_prefix``, the transformer module's (``model.transformer_module.*``) and the
    class predictor under ``transformer_prefix``; the backbone's and the loss's keys are returned
    as unused (d2ext's backbones load their own weights). Tensors are not copied.
    """
    out, unused, qkv = {}, [], {}
    num_fpn = 1 + max([int(m.group(2)) - 1 for k in state_dict if k.startswith(PIXEL_DECODER)
                       for m in [_FPN.match(k[len(PIXEL_DECODER):])] if m] or [-1])
    for key, value in state_dict.items():
        new = None
        if key.startswith(PIXEL_DECODER):
            rest = key[len(PIXEL_DECODER):]
            new = _apply(_PIXEL_DECODER_RULES, rest) or _fpn_key(rest, num_fpn)
            new = new and pixel_decoder_prefix + new
        elif key.startswith(TRANSFORMER):
            rest = key[len(TRANSFORMER):]
            m = _QKV.match(rest)
            if m:
                qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
                continue
            m = _MASK_MLP.match(rest)
            if m:  # Linear i of the MLP is entry 2 i of d2ext's Sequential (ReLUs between)
                new = f"mask_embed.{2 * int(m.group(1))}.{m.group(2)}"
            else:
                new = _apply(_TRANSFORMER_RULES, rest)
            new = new and transformer_prefix + new
        elif key.startswith(CLASS_PREDICTOR):
            new = transformer_prefix + "class_embed." + key[len(CLASS_PREDICTOR):]
        if new is None:
            unused.append(key)
        else:
            out[new] = value
    for (layer, name), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"decoder layer {layer}: self-attention {name} has only "
                           f"{sorted(parts)} of q/k/v projections")
        out[f"{transformer_prefix}layers.{layer}.self_attn.in_proj_{name}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]])
    return out, unused
