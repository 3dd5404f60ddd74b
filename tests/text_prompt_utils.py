"""A tiny random SAM 3 with its tokenizer, saved as a user's save_pretrained directory."""
from d2ext.modeling.text_prompt import word_tokenizer

WORDS = ["circle", "square", "triangle", "star", "duck", "panda", "dice", "rubber", "a"]


def tiny_sam3_config(image_size=112, vocab_size=len(WORDS) + 4):
    from transformers import Sam3Config

    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", num_hidden_layers=2, patch_size=14,
                                 image_size=image_size, pretrain_image_size=image_size,
                                 window_size=4, global_attn_indexes=[1], **small),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[4 * image_size // 14] * 2, [2 * image_size // 14] * 2,
                                    [image_size // 14] * 2]),
        text_config=dict(num_hidden_layers=1, max_position_embeddings=32, vocab_size=vocab_size,
                         projection_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         **small),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=10, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2))


def save_tiny_sam3(directory, seed=0):
    """Write a random tiny SAM 3 and its tokenizer to ``directory``; returns the directory."""
    import torch
    from transformers import Sam3Model

    torch.manual_seed(seed)
    Sam3Model(tiny_sam3_config()).save_pretrained(directory)
    word_tokenizer(WORDS).save_pretrained(directory)
    return str(directory)
