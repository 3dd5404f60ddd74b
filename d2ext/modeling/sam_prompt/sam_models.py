"""Building SAM (the official ``segment-anything`` package) from a model type and a checkpoint."""
import logging
import os
from functools import partial

import torch

from ...errors import UserError

logger = logging.getLogger(__name__)

SAM_CHECKPOINTS_URL = ("https://github.com/facebookresearch/segment-anything#model-checkpoints "
                       "(README, 'Model Checkpoints')")
SAM_TYPES = ("vit_b", "vit_l", "vit_h", "tiny")


class SamCheckpointError(UserError, RuntimeError):
    """A SAM checkpoint that is missing or does not fit the configured model type."""


def build_tiny_sam(img_size=128, width=32):
    """A small random SAM assembled from segment-anything's own modules, for tests and CPU
    smoke runs: a 2-block ViT encoder (global attention) at ``img_size``, embedding grid
    ``img_size / 16``, a 1-layer two-way transformer; low-res masks are ``img_size / 4``."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=width, depth=2,
                                      num_heads=2, out_chans=width,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=width, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=width, num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=width,
                                                               mlp_dim=2 * width, num_heads=2),
                                 iou_head_depth=2, iou_head_hidden_dim=width),
    ).eval()


def build_sam_model(model_type, checkpoint=""):
    """SAM of ``model_type`` ("vit_b", "vit_l", "vit_h" or "tiny") with the weights of
    ``checkpoint`` (an official ``sam_vit_*.pth``); random weights when ``checkpoint`` is ""."""
    if model_type not in SAM_TYPES:
        raise ValueError(f"MODEL.SAM_PROMPT.SAM_TYPE={model_type!r}: choose one of {SAM_TYPES}")
    if checkpoint and not os.path.isfile(checkpoint):
        raise SamCheckpointError(
            f"SAM checkpoint {checkpoint!r} (MODEL.SAM_PROMPT.SAM_CHECKPOINT, type {model_type}) "
            f"does not exist. Download the official {model_type} checkpoint from "
            f"{SAM_CHECKPOINTS_URL} and set its path.")
    if model_type == "tiny":
        sam = build_tiny_sam()
    else:
        from segment_anything import sam_model_registry

        sam = sam_model_registry[model_type]()  # random weights; the checkpoint is loaded below
    if not checkpoint:
        logger.warning(f"SAM {model_type} has random weights (MODEL.SAM_PROMPT.SAM_CHECKPOINT is "
                       f"empty): its masks are meaningless. Official checkpoints: "
                       f"{SAM_CHECKPOINTS_URL}")
        return sam.eval()
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    except Exception as err:  # unpickling errors, or shapes / keys of another model type
        raise SamCheckpointError(
            f"SAM checkpoint {checkpoint!r} does not load as MODEL.SAM_PROMPT.SAM_TYPE="
            f"{model_type!r}{_guess_type(checkpoint)}. Use the official {model_type} checkpoint "
            f"from {SAM_CHECKPOINTS_URL}, or set SAM_TYPE to the checkpoint's type.\n"
            f"({type(err).__name__}: {str(err)[:300]})") from err
    return sam.eval()


def _guess_type(checkpoint):
    """', which looks like vit_l' from the encoder's width, when the file is a SAM state dict."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        width = state["image_encoder.pos_embed"].shape[-1]
    except Exception:
        return ""
    found = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(width)
    return f", which looks like a {found} checkpoint" if found else ""
