"""A lean inference forward for transformers' ``DINOv3ViTLayer``: same weights, same result.

transformers' layer projects q, k and v with three matrix products, rotates q and k separately
(RoPE on the patch tokens: split, rotate, concatenate) and scales each residual branch in its own
pass. Without autograd all of that can be done in fewer passes over the tokens:
- one product with the concatenated q/k/v weights;
- RoPE applied to q and k together, in place in that product's output;
- LayerScale and the residual add fused (``torch.addcmul``).
The attention itself is ``F.scaled_dot_product_attention``, as transformers' "sdpa" path.
tests/test_dino_backbone.py checks the result against the layer's own forward.
"""
import torch
import torch.nn.functional as F


def use_lean_forward(block):
    """Whether ``run_block`` takes the lean path for this layer now: a DINOv3 layer, in eval
    mode, without autograd (the in-place RoPE would break backward)."""
    return (not torch.is_grad_enabled() and not block.training
            and hasattr(block, "layer_scale1") and hasattr(block.attention, "q_proj"))


def run_block(block, hidden, position_embeddings=None, attention_mask=None):
    """``block(hidden, attention_mask=..., position_embeddings=...)``, by the lean path when
    ``use_lean_forward(block)``, else by the layer's own forward (DINOv2, training)."""
    if position_embeddings is not None and use_lean_forward(block):
        return dinov3_layer_inference(block, hidden, position_embeddings, attention_mask)
    extra = {} if position_embeddings is None else {"position_embeddings": position_embeddings}
    return block(hidden, attention_mask=attention_mask, **extra)


def _qkv_projection(attention):
    """Concatenated (3C, C) weight and (3C,) bias of q, k and v (absent biases are zeros)."""
    layers = (attention.q_proj, attention.k_proj, attention.v_proj)
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias if layer.bias is not None else
                      torch.zeros_like(layer.weight[:, 0]) for layer in layers])
    return weight, bias


def dinov3_layer_inference(block, hidden, position_embeddings, attention_mask=None):
    """``DINOv3ViTLayer.forward`` without autograd: (B, N, C) tokens -> (B, N, C).

    ``position_embeddings`` (cos, sin) of the patch tokens, (P, head_dim) each, the last P of the
    N tokens (the first N - P are the class and register tokens, not rotated).
    ``attention_mask``: None, or a bool mask broadcastable to (B, heads, N, N), True = attend.
    """
    attention = block.attention
    b, n, c = hidden.shape
    heads, dim = attention.num_heads, attention.head_dim
    qkv = F.linear(block.norm1(hidden), *_qkv_projection(attention)).view(b, n, 3, heads, dim)
    cos, sin = position_embeddings
    patches = cos.shape[-2]
    cos, sin = cos.reshape(patches, 1, 1, dim), sin.reshape(patches, 1, 1, dim)
    qk = qkv[:, n - patches:, :2]  # the patch tokens' q and k: (B, P, 2, heads, dim)
    half = dim // 2
    rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)  # rotate_half
    qk.copy_(qk * cos + rotated * sin)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, dim) each
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                         scale=attention.scaling)
    out = attention.o_proj(out.transpose(1, 2).reshape(b, n, c))
    hidden = torch.addcmul(hidden, out, block.layer_scale1.lambda1)
    return torch.addcmul(hidden, block.mlp(block.norm2(hidden)), block.layer_scale2.lambda1)
