"""SAM's mask decoder for many prompts on one image, without copying the image per prompt.

Same computation as ``segment_anything``'s ``MaskDecoder.predict_masks`` (exact up to float
rounding), rearranged for the case d2ext always has: one image embedding, many prompts, no mask
prompt. SAM repeats the (N = 64x64, 256) image tokens once per prompt and then projects, adds and
transposes those copies; on a CPU that memory traffic costs more than SAM's image encoder's share
of the budget. Here:
- the first block's image side is identical for every prompt, so its projections are computed
  once per image (kept across the prompt batches) and broadcast;
- projections of per-prompt image tokens are folded into the few prompt tokens instead
  (``(q Wk) . x`` rather than ``q . (Wk x)``; ``(A x) Wv`` rather than ``A (x Wv)``), since a
  prompt has ~7 tokens against 4096 image tokens; the positional encoding's share of those
  scores comes from its own projection, made once per image, so ``image + pe`` is never
  formed per prompt;
- the prompts' own image tokens live in one buffer per image, updated and normalised in place;
- the final attention treats each token on its own, so it runs only for the tokens read after
  it (the IoU token and the candidate mask tokens: 4 of ~7 for a point prompt);
- the upscaling convolutions read the image tokens in channels-last layout (no transpose copy),
  and SAM's LayerNorm2d (six passes over the upscaled maps) becomes one fused layer norm over
  that layout's last axis; the activations run in place;
- only each prompt's chosen mask is drawn, over the grid cells that cover the image.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def _heads(attn):
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _shared(cache, key, compute):
    """``compute()``, kept in ``cache`` (a dict for one image, or None) under ``key``."""
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _plus_pe(image, pe, cache):
    """The shared image's ``image + pe``, formed once per image for both attentions."""
    return _shared(cache, "image + pe", lambda: image + pe)


def _token_to_image(attn, q_tokens, image, pe, cache, shared):
    """``attn(q=q_tokens, k=image + pe, v=image)``: (B, T, C) tokens attend to the image tokens
    ``image`` (B|1, N, C) with positional encoding ``pe`` (1, N, C).

    ``shared``: ``image`` is the image's own (1, N, C), the same for every prompt: its keys and
    values are projected once per image (kept in ``cache``). Otherwise the key projection is
    folded into the few prompt tokens, and the positional encoding's share of the scores comes
    from its projection, kept per image."""
    b, t, c = q_tokens.shape
    h, d = _heads(attn)
    if shared:  # keys and values once per image, heads batched
        k, v = _shared(cache, (id(attn), "kv"), lambda: (
            attn.k_proj(_plus_pe(image, pe, cache))[0].view(-1, h, d).permute(1, 2, 0).contiguous(),
            attn.v_proj(image)[0].view(-1, h, d).transpose(0, 1).contiguous()))  # (H, d|N, N|d)
        q = attn.q_proj(q_tokens).view(b * t, h, d).transpose(0, 1) / math.sqrt(d)  # (H, B*T, d)
        weights = torch.softmax(q @ k, dim=-1)  # (H, B*T, N)
        out = (weights @ v).view(h, b, t, d).permute(1, 2, 0, 3)  # (B, T, H, d)
        return attn.out_proj(out.reshape(b, t, h * d))
    q = attn.q_proj(q_tokens).view(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
    scores = _folded_scores(attn.k_proj, q / math.sqrt(d), image, pe, cache, (id(attn), "pe k"))
    weights = torch.softmax(scores, dim=-1)
    pooled = (weights.view(b, h * t, -1) @ image).view(b, h, t, c)  # softmax rows sum to 1:
    out = torch.einsum("bhtc,hdc->bhtd", pooled, attn.v_proj.weight.view(h, d, c))
    out = out + attn.v_proj.bias.view(1, h, 1, d)  # so the value bias passes through unchanged
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def _folded_scores(proj, x, image, pe, cache, key):
    """Per-head scores (B, H, T, N) of the per-head rows ``x`` (B, H, T, d) against
    ``proj(image + pe)``: ``(x Wh) . image`` for the per-prompt image plus ``x . proj(pe)``,
    whose projection (bias included) is made once per image."""
    b, h, t, d = x.shape
    n, c = image.shape[-2:]
    projected_pe = _shared(cache, key, lambda: proj(pe[0]).view(n, h, d).permute(1, 2, 0))
    folded = torch.einsum("bhtd,hdc->bhtc", x, proj.weight.view(h, d, c)).reshape(b, h * t, c)
    base = torch.einsum("bhtd,hdn->bhtn", x, projected_pe).reshape(b, h * t, n)
    return torch.baddbmm(base, folded, image.transpose(1, 2)).view(b, h, t, n)


def _image_to_token(attn, norm, image, pe, k_tokens, v_tokens, cache, shared, out):
    """``norm(image + attn(q=image + pe, k=k_tokens, v=v_tokens))``: the image tokens (B|1, N, C)
    attend to the (B, T, C) prompt tokens; written into ``out`` (B, N, C), which may be
    ``image`` itself. ``pe``, ``cache``, ``shared`` as for :func:`_token_to_image`.

    The scores are laid out (B, H, T, N) so the softmax runs over T along a strided axis (a
    softmax over a last axis of T ~ 7 is ~10x slower on CPU), and the residual and the output
    bias are added by the final matrix product itself (each head's weights sum to 1, so the
    bias, split over the heads, can ride on the values)."""
    b, t, c = k_tokens.shape
    h, d = _heads(attn)
    # (B, H, T, d), with the scores' scale (on the few token rows rather than on the scores)
    k = attn.k_proj(k_tokens).view(b, t, h, d).transpose(1, 2) / math.sqrt(d)
    v = attn.v_proj(v_tokens).view(b, t, h, d)
    if shared:  # the image's queries once per image, heads batched
        q = _shared(cache, (id(attn), "q"), lambda: attn.q_proj(  # (H, d, N)
            _plus_pe(image, pe, cache))[0].view(-1, h, d).permute(1, 2, 0).contiguous())
        scores = (k.transpose(0, 1).reshape(h, b * t, d) @ q).view(h, b, t, -1).transpose(0, 1)
    else:
        scores = _folded_scores(attn.q_proj, k, image, pe, cache, (id(attn), "pe q"))
    weights = torch.softmax(scores, dim=2).reshape(b, h * t, -1).transpose(1, 2)  # (B, N, H*T)
    values = torch.einsum("bthd,chd->bhtc", v, attn.out_proj.weight.view(c, h, d))
    values = values.reshape(b, h * t, c) + attn.out_proj.bias / h
    out[:] = norm(torch.baddbmm(image.expand(b, -1, -1), weights, values))
    return out


def predict_masks_shared_image(decoder, image_embedding, image_pe, sparse, dense,
                               candidates=slice(None), grid_size=None, cache=None):
    """``decoder.predict_masks`` for B prompts on one image, keeping each prompt's best mask:
    ``image_embedding``, ``image_pe`` and ``dense`` (1, C, g, g), ``sparse`` (B, S, C).

    Of the mask tokens in ``candidates`` (SAM: ``slice(1, None)`` for its 3 multimask outputs,
    ``slice(0, 1)`` for the single one) the one with the highest predicted IoU is chosen before
    any mask is drawn, so only that mask is computed. ``grid_size`` (gh, gw) <= (g, g) upscales
    only the top-left gh x gw cells of the image grid (the image inside SAM's padded square:
    upscaling and the mask products are per cell, so the masks there are unchanged). Returns
    mask logits (B, 4gh, 4gw) and predicted IoUs (B,).

    ``cache``: a dict kept by the caller across the prompt batches of one image; the image's
    side of the first block (the same for every prompt) is then computed once per image."""
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    g = image_embedding.shape[-1]
    keys, pe = _shared(cache, "keys, pe", lambda: (  # (1, N, C); keys become (B, N, C)
        (image_embedding + dense).flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2)))
    transformer = decoder.transformer
    queries = tokens
    # The prompts' own image tokens (B, N, C), made by the first block and updated in place:
    # one buffer per batch size, kept across the batches of an image.
    image_tokens = _shared(cache, ("image tokens", b), lambda: keys.new_empty(b, *keys.shape[1:]))
    shared = True  # while the image tokens are the image's own, the same for all prompts
    for layer in transformer.layers:  # TwoWayAttentionBlock.forward, rearranged
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        queries = layer.norm2(queries + _token_to_image(
            layer.cross_attn_token_to_image, queries + tokens, keys, pe, cache, shared))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = _image_to_token(layer.cross_attn_image_to_token, layer.norm4, keys, pe,
                               queries + tokens, queries, cache, shared, out=image_tokens)
        shared = False  # the image tokens now depend on the prompt
    # The final attention treats each token on its own, and only the IoU token and the
    # candidate mask tokens are read after it: it runs for those alone.
    mask_tokens = range(decoder.num_mask_tokens)[candidates]
    rows = [0] + [1 + i for i in mask_tokens]
    q = queries[:, rows]
    out = transformer.norm_final_attn(q + _token_to_image(
        transformer.final_attn_token_to_image, q + tokens[:, rows], keys, pe, cache, shared))
    iou, best = decoder.iou_prediction_head(out[:, 0])[:, candidates].max(1)
    prompts = torch.arange(b, device=best.device)
    mask_token = out[prompts, 1 + best]
    best = best + mask_tokens.start  # mask-token index
    # Each prompt's hypernetwork output (B, c): every MLP on the B rows (cheap), then each
    # prompt's own.
    hyper_in = torch.stack([mlp(mask_token) for mlp in decoder.output_hypernetworks_mlps], 1)
    hyper_in = hyper_in[prompts, best]
    if keys.shape[0] == 1:  # a transformer without blocks leaves the image shared
        keys = keys.expand(b, -1, -1)
    gh, gw = grid_size or (g, g)
    # (B, N, C) is already the channels-last layout of (B, C, g, g): no transpose copy.
    grid = keys.reshape(b, g, g, -1)[:, :gh, :gw].permute(0, 3, 1, 2)
    return _mask_logits(decoder.output_upscaling, grid, hyper_in), iou


def _mask_logits(upscaling, grid, hyper_in):
    """``einsum("bc,bchw->bhw", hyper_in, upscaling(grid))``: each prompt's mask logits (B, 4gh,
    4gw) from its image tokens (B, C, gh, gw) and hypernetwork output (B, c)."""
    return torch.einsum("bc,bchw->bhw", hyper_in, _upscale(upscaling, grid))


def _upscale(upscaling, x):
    """SAM's ``output_upscaling`` (ConvT, LayerNorm2d, act, ConvT, act) on channels-last maps,
    the activations in place on the fresh outputs."""
    conv1, norm, act1, conv2, act2 = upscaling
    x = conv1(x).permute(0, 2, 3, 1)  # (B, H, W, C)
    x = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
    return _activate_(act2, conv2(_activate_(act1, x)))


def _activate_(act, x):
    """``act(x)``, in place for SAM's activation modules (GELU, ReLU)."""
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if isinstance(act, nn.ReLU):
        return x.relu_()
    return act(x)
