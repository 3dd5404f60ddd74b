"""transformers' EoMT (``EomtForUniversalSegmentation``, ``EomtDinov3ForUniversalSegmentation``)
-> a d2ext config and a detectron2 checkpoint of d2ext's ``EoMT`` (used by
tools/convert_eomt.py; the EoMT repository's own checkpoints: eomt_zoo.py)."""
import os

import torch
from detectron2.modeling import build_model

from ...config import get_d2ext_cfg
from ...errors import UserError
from ..backbone.archs import DINO_ARCHS


class EomtConversionError(UserError, RuntimeError):
    """An EoMT model (transformers' or the EoMT repository's checkpoint) could not be found,
    has no d2ext equivalent, or is given with the wrong base weights."""


def _offline_error(src, err):
    return EomtConversionError(
        f"{src!r} is neither a local save_pretrained directory nor a hub id in the local cache "
        f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}, cache: "
        f"{os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}"
        "). On a machine without internet, download the model elsewhere (`hf download <id> "
        "--local-dir DIR` or `EomtForUniversalSegmentation.from_pretrained(id)."
        "save_pretrained(DIR)`), copy DIR here and pass DIR as SRC. "
        f"Cause: {type(err).__name__}: {err}")


def load_hf_eomt(src):
    """A transformers EoMT model (eval mode) from a save_pretrained directory or a hub id."""
    # lazy: import d2ext stays light
    from transformers import (
        AutoConfig,
        EomtDinov3ForUniversalSegmentation,
        EomtForUniversalSegmentation,
    )

    try:
        config = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as err:
        raise _offline_error(src, err) from err
    classes = {"eomt": EomtForUniversalSegmentation,
               "eomt_dinov3": EomtDinov3ForUniversalSegmentation}
    if config.model_type not in classes:
        raise EomtConversionError(f"{src!r} holds a {config.model_type!r} model; expected an "
                                  f"EoMT model (model_type {sorted(classes)}).")
    try:
        return classes[config.model_type].from_pretrained(src).eval()
    except (OSError, ValueError) as err:
        raise _offline_error(src, err) from err


def _find_arch(family, config, mlp, gated, patch):
    for name, arch in DINO_ARCHS.items():
        if (arch.family, arch.width, arch.depth, arch.heads, arch.mlp, arch.gated) == (
                family, config.hidden_size, config.num_hidden_layers,
                config.num_attention_heads, mlp, gated) and (family != "dinov3" or
                                                            arch.patch == patch):
            return name
    raise EomtConversionError(
        f"No MODEL.DINO.ARCH in d2ext.modeling.backbone.archs.DINO_ARCHS matches this EoMT's "
        f"ViT ({family}, width {config.hidden_size}, {config.num_hidden_layers} blocks, "
        f"{config.num_attention_heads} heads, MLP {mlp}{', gated' if gated else ''}, patch "
        f"{patch}); add an entry for it to DINO_ARCHS.")


def eomt_cfg(arch, num_classes, num_queries, num_blocks, weights=""):
    """The d2ext config of a converted EoMT: the bare DINO ViT ``arch``, ``num_classes``
    classes, ``num_queries`` queries joining its last ``num_blocks`` blocks, MODEL.WEIGHTS
    ``weights``."""
    cfg = get_d2ext_cfg()
    cfg.MODEL.META_ARCHITECTURE = "EoMT"
    cfg.MODEL.BACKBONE.NAME = "build_dino_vit_backbone"
    cfg.MODEL.DINO.ARCH = arch
    cfg.MODEL.DINO.WEIGHTS = ""
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.EOMT.NUM_QUERIES = num_queries
    cfg.MODEL.EOMT.NUM_BLOCKS = num_blocks
    return cfg


def eomt_cfg_from_hf(hf_config, weights=""):
    """The d2ext config (detectron2 CfgNode) that builds d2ext's EoMT with the architecture of
    the transformers EoMT config ``hf_config``; MODEL.WEIGHTS = ``weights``."""
    c = hf_config
    patch = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
    image_size = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
    if c.model_type == "eomt_dinov3":
        rope = (c.rope_parameters or {}).get("rope_theta", 100.0)
        if rope != 100.0 or c.num_register_tokens != 4 or c.key_bias or not c.query_bias \
                or not c.value_bias or not c.proj_bias or not c.mlp_bias:
            raise EomtConversionError(
                "This EoMT-DINOv3 config differs from DINOv3's (rope_theta 100, 4 registers, "
                "biases on q/v/proj/mlp, none on k); d2ext's DINOv3 ViT cannot load it.")
        arch = _find_arch("dinov3", c, c.intermediate_size, c.use_gated_mlp, patch)
    else:
        if c.num_register_tokens not in (0, 4):
            raise EomtConversionError(f"num_register_tokens={c.num_register_tokens}: d2ext's "
                                      "DINOv2 ViTs have 0 or 4 register tokens.")
        family = "dinov2_reg" if c.num_register_tokens else "dinov2"
        arch = _find_arch(family, c, c.mlp_ratio * c.hidden_size, c.use_swiglu_ffn, patch)
    cfg = eomt_cfg(arch, c.num_labels, c.num_queries, c.num_blocks, weights)
    cfg.MODEL.EOMT.NUM_UPSCALE_BLOCKS = c.num_upscale_blocks
    cfg.MODEL.EOMT.PATCH_SIZE = patch if patch != DINO_ARCHS[arch].patch else 0
    cfg.MODEL.EOMT.IMAGE_SIZE = image_size if c.model_type == "eomt" else 0
    cfg.MODEL.EOMT.LAYER_NORM_EPS = c.layer_norm_eps
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = c.no_object_weight
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = c.class_weight
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = c.mask_weight
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = c.dice_weight
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = c.train_num_points
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = c.oversample_ratio
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = c.importance_sample_ratio
    # EoMT's processor scales the longer side to image_size (and pads to a square, which d2ext
    # does not need); inputs are RGB with ImageNet statistics.
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TEST = image_size
    cfg.INPUT.MAX_SIZE_TEST = image_size
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    return cfg


def eomt_state_dict_from_hf(hf_model, model):
    """transformers EoMT state dict -> the state dict of d2ext's ``EoMT`` ``model`` (built from
    ``eomt_cfg_from_hf``). Every tensor of ``model`` except DINO's unused mask token must be
    found, with its shape, else EomtConversionError."""
    dinov3 = hf_model.config.model_type == "eomt_dinov3"
    blocks = "backbone.vit.model.layer." if dinov3 else "backbone.vit.encoder.layer."
    final_norm = "backbone.vit.norm." if dinov3 else "backbone.vit.layernorm."
    out = {}
    for key, value in hf_model.state_dict().items():
        if key.startswith("criterion."):
            continue
        if key.startswith("layers."):
            key = blocks + key[len("layers."):].replace(".attention.out_proj.",
                                                        ".attention.o_proj.")
        elif key.startswith("layernorm."):
            key = final_norm + key[len("layernorm."):]
        elif key == "embeddings.position_embeddings.weight":
            # EoMT adds no position to the CLS token; DINOv2's table has a CLS row: zero.
            key = "backbone.vit.embeddings.position_embeddings"
            value = torch.cat([value.new_zeros(1, value.shape[1]), value])[None]
        elif key.startswith("embeddings."):
            key = "backbone.vit." + key
        out[key] = value
    own = model.state_dict()
    missing = [k for k in own if k not in out and not k.endswith("embeddings.mask_token")]
    unused = [k for k in out if k not in own]
    wrong = [f"{k}: {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in out and out[k].shape != own[k].shape]
    if missing or unused or wrong:
        raise EomtConversionError(f"transformers EoMT -> d2ext EoMT: {len(missing)} tensors "
                                  f"missing (e.g. {missing[:3]}), {len(unused)} unused (e.g. "
                                  f"{unused[:3]}), {len(wrong)} of another shape ({wrong[:3]}).")
    for k in own:
        out.setdefault(k, own[k])
    return out


def convert_hf_eomt(src, dst):
    """Convert ``src`` (save_pretrained directory or hub id) into the detectron2 checkpoint
    ``dst`` (.pth, {"model": state_dict}) and its config next to it (``dst`` with .yaml).
    Returns (checkpoint path, yaml path)."""
    hf_model = load_hf_eomt(src)
    dst = os.path.abspath(dst if dst.endswith(".pth") else dst + ".pth")
    cfg = eomt_cfg_from_hf(hf_model.config, weights=dst)
    build_cfg = cfg.clone()
    build_cfg.MODEL.DEVICE = "cpu"
    model = build_model(build_cfg)
    state = eomt_state_dict_from_hf(hf_model, model)
    model.load_state_dict(state)  # strict: proves the checkpoint fits the config
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    torch.save({"model": model.state_dict(), "__author__": f"converted from {src}"}, dst)
    yaml_path = dst[: -len(".pth")] + ".yaml"
    with open(yaml_path, "w") as f:
        f.write(f"# d2ext EoMT converted from transformers' {type(hf_model).__name__} {src!r}.\n"
                "# Outputs: MODEL.MASK_FORMER.TEST.{INSTANCE,SEMANTIC,PANOPTIC}_ON; classes: "
                f"{hf_model.config.num_labels} (see the model's id2label).\n")
        f.write(cfg.dump())
    return dst, yaml_path
