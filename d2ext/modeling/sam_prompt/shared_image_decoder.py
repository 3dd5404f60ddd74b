"""SAM's mask decoder for many prompts on one image, without copying the image per prompt.

Same computation as ``segment_anything``'s ``MaskDecoder.predict_masks`` (exact up to float
rounding), rearranged for the case d2ext always has: one image embedding, many prompts, no mask
prompt. SAM repeats the (N = 64x64, 256) image tokens once per prompt and then projects, adds and
transposes those copies; on a CPU that memory traffic costs more than SAM's image encoder's share
of the budget. Here:
- the first block's image side is identical for every prompt, so its projections are computed
  once and broadcast;
- projections of per-prompt image tokens are folded into the few prompt tokens instead
  (``(q Wk) . x`` rather than ``q . (Wk x)``; ``(A x) Wv`` rather than ``A (x Wv)``), since a
  prompt has ~7 tokens against 4096 image tokens;
- the upscaling convolutions read the image tokens in channels-last layout (no transpose copy),
  and SAM's LayerNorm2d (six passes over the upscaled maps) becomes one fused layer norm over
  that layout's last axis.
"""
import math

import torch
import torch.nn.functional as F


def _heads(attn):
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _token_to_image(attn, q_tokens, image_pe_sum, image):
    """``attn(q=q_tokens, k=image_pe_sum, v=image)``: (B, T, C) tokens attend to (B|1, N, C)."""
    if image.shape[0] == 1:  # shared image: SAM's own module broadcasts over the prompts
        return attn(q=q_tokens, k=image_pe_sum, v=image)
    b, t, c = q_tokens.shape
    h, d = _heads(attn)
    q = attn.q_proj(q_tokens).view(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
    wk = attn.k_proj.weight.view(h, d, c)
    folded = torch.einsum("bhtd,hdc->bhtc", q, wk).reshape(b, h * t, c)
    scores = (folded @ image_pe_sum.transpose(1, 2)).view(b, h, t, -1)
    scores = scores + torch.einsum("bhtd,hd->bht", q, attn.k_proj.bias.view(h, d))[..., None]
    weights = torch.softmax(scores / math.sqrt(d), dim=-1)
    pooled = (weights.view(b, h * t, -1) @ image).view(b, h, t, c)  # softmax rows sum to 1:
    out = torch.einsum("bhtc,hdc->bhtd", pooled, attn.v_proj.weight.view(h, d, c))
    out = out + attn.v_proj.bias.view(1, h, 1, d)  # so the value bias passes through unchanged
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def _image_to_token(attn, image_pe_sum, k_tokens, v_tokens):
    """``attn(q=image_pe_sum, k=k_tokens, v=v_tokens)``: (B|1, N, C) image tokens attend to the
    (B, T, C) prompt tokens; returns (B, N, C)."""
    b, t, c = k_tokens.shape
    h, d = _heads(attn)
    k = attn.k_proj(k_tokens).view(b, t, h, d)
    v = attn.v_proj(v_tokens).view(b, t, h, d)
    if image_pe_sum.shape[0] == 1:
        q = attn.q_proj(image_pe_sum).view(1, -1, h, d).transpose(1, 2)  # (1, H, N, d), shared
        scores = (q @ k.permute(0, 2, 3, 1)).permute(0, 2, 1, 3)  # (B, N, H, T)
    else:
        folded = torch.einsum("hdc,bthd->bcht", attn.q_proj.weight.view(h, d, c), k)
        scores = (image_pe_sum @ folded.reshape(b, c, h * t)).view(b, -1, h, t)
        scores = scores + torch.einsum("hd,bthd->bht", attn.q_proj.bias.view(h, d), k)[:, None]
    weights = torch.softmax(scores / math.sqrt(d), dim=-1)
    values = torch.einsum("bthd,chd->bhtc", v, attn.out_proj.weight.view(c, h, d))
    return weights.reshape(b, -1, h * t) @ values.reshape(b, h * t, c) + attn.out_proj.bias


def predict_masks_shared_image(decoder, image_embedding, image_pe, sparse, dense):
    """``decoder.predict_masks`` for B prompts on one image: ``image_embedding``, ``image_pe``
    and ``dense`` (1, C, g, g), ``sparse`` (B, S, C). Returns masks (B, M, 4g, 4g) and IoU
    predictions (B, M) for all M = num_multimask_outputs + 1 mask tokens."""
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    g = image_embedding.shape[-1]
    keys = (image_embedding + dense).flatten(2).transpose(1, 2)  # (1, N, C), becomes (B, N, C)
    pe = image_pe.flatten(2).transpose(1, 2)
    transformer = decoder.transformer
    queries = tokens
    for layer in transformer.layers:  # TwoWayAttentionBlock.forward, rearranged
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        keys_pe = keys + pe
        queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image,
                                                        queries + tokens, keys_pe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + _image_to_token(layer.cross_attn_image_to_token, keys_pe,
                                                  queries + tokens, queries))
    queries = transformer.norm_final_attn(queries + _token_to_image(
        transformer.final_attn_token_to_image, queries + tokens, keys + pe, keys))
    if keys.shape[0] == 1:  # a transformer without blocks leaves the image shared
        keys = keys.expand(b, -1, -1)
    # (B, N, C) is already the channels-last layout of (B, C, g, g): no transpose copy.
    upscaled = _upscale(decoder.output_upscaling, keys.reshape(b, g, g, -1).permute(0, 3, 1, 2))
    hyper_in = torch.stack([mlp(queries[:, 1 + i]) for i, mlp in
                            enumerate(decoder.output_hypernetworks_mlps)], dim=1)  # (B, M, c)
    masks = torch.einsum("bmc,bchw->bmhw", hyper_in, upscaled)
    return masks, decoder.iou_prediction_head(queries[:, 0])


def _upscale(upscaling, x):
    """SAM's ``output_upscaling`` (ConvT, LayerNorm2d, act, ConvT, act) on channels-last maps."""
    conv1, norm, act1, conv2, act2 = upscaling
    x = conv1(x).permute(0, 2, 3, 1)  # (B, H, W, C)
    x = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
    return act2(conv2(act1(x)))
