"""Loading pretrained DINO weights: transformers hub id, local directory or state-dict file."""
import logging
import os
import re
from collections import Counter

import torch

from ...errors import UserError
from ..converters.dino_meta import (
    MetaCheckpointError,
    convert_meta_convnext,
    convert_meta_dino,
    describe_hf,
    describe_hf_convnext,
    describe_meta,
    describe_meta_convnext,
    meta_convnext_prefix,
    meta_prefix,
)
from .archs import DINO_ARCHS, DINO_CONVNEXT_ARCHS

logger = logging.getLogger(__name__)

_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class DinoWeightsError(UserError, RuntimeError):
    """Pretrained DINO weights could not be found or do not fit the configured architecture."""


def _hub_error(weights, arch_name, err):
    gated = ("DINOv3 repositories on the Hugging Face hub are gated: accept the licence on the "
             f"model page of {weights!r} with your account and log in (`hf auth login`, or set "
             "HF_TOKEN) before the first download. ") if "dinov3" in weights.lower() else ""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    return DinoWeightsError(
        f"MODEL.DINO.WEIGHTS={weights!r} (for MODEL.DINO.ARCH={arch_name!r}) could not be loaded: "
        f"it is neither a local path nor a hub id in the local cache "
        f"(HF_HUB_OFFLINE={'1' if offline else 'unset'}, cache: "
        f"{os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'})"
        f". {gated}On a machine without internet, download the model elsewhere "
        "(`hf download <id> --local-dir DIR` or `save_pretrained(DIR)`), copy DIR here and set "
        "MODEL.DINO.WEIGHTS=DIR, or point it to a `.pth` state dict; MODEL.DINO.WEIGHTS='' "
        f"builds the model with random weights. Cause: {type(err).__name__}: {err}")


def _read_state_dict_file(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # lazy: import d2ext stays light

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "teacher"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _strip_prefix(state, target_keys):
    """Drop a leading prefix (e.g. "backbone.net.vit.", "module.") so keys match the model's:
    the prefix under which most of the model's keys are found (a whole detector also has keys
    such as "backbone.fpn_output2.norm.weight" that end like one of the ViT's)."""
    if any(k in target_keys for k in state):
        return state
    counts = Counter(key[: -len(target)] for key in state for target in target_keys
                     if key.endswith("." + target))
    if not counts:
        return state
    prefix = counts.most_common(1)[0][0]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


_ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "patch_size", "num_register_tokens", "intermediate_size", "mlp_ratio",
                "use_swiglu_ffn", "use_gated_mlp", "query_bias", "value_bias", "hidden_sizes",
                "depths")


def _from_pretrained(vit, weights, arch_name):
    """State dict of a save_pretrained directory or hub id, after checking its config fits."""
    from transformers import AutoConfig  # lazy: import d2ext stays light

    try:
        config = AutoConfig.from_pretrained(weights)
    except (OSError, ValueError) as err:
        if os.path.isdir(weights):
            raise DinoWeightsError(
                f"MODEL.DINO.WEIGHTS={weights!r}: the directory holds no transformers model "
                f"(config.json and weights written by save_pretrained). Cause: {err}") from err
        raise _hub_error(weights, arch_name, err) from err
    differ = [f"{k}: {getattr(config, k, None)!r} there, {getattr(vit.config, k, None)!r} here"
              for k in _ARCH_FIELDS if getattr(config, k, None) != getattr(vit.config, k, None)]
    if differ:
        raise DinoWeightsError(
            f"MODEL.DINO.WEIGHTS={weights!r} does not fit MODEL.DINO.ARCH={arch_name!r} "
            f"({'; '.join(differ)}). Set MODEL.DINO.ARCH to the architecture of the weights.")
    try:
        return type(vit).from_pretrained(weights).state_dict()
    except (OSError, ValueError, RuntimeError) as err:
        if os.path.isdir(weights):
            raise DinoWeightsError(f"MODEL.DINO.WEIGHTS={weights!r}: its weights could not be "
                                   f"loaded: {err}") from err
        raise _hub_error(weights, arch_name, err) from err


def _fitting_archs(kind, there):
    if kind == "convnext":
        return [name for name, a in DINO_CONVNEXT_ARCHS.items()
                if (a.widths, a.depths) == (there["widths"], there["depths"])]
    return [name for name, a in DINO_ARCHS.items()
            if (a.family, a.width, a.depth, a.patch, a.gated) == tuple(
                there[k] for k in ("family", "width", "depth", "patch", "gated"))]


def _from_meta(model, state, weights, arch_name):
    """transformers-layout state dict of a Meta-layout checkpoint (ViT or ConvNeXt), after
    checking that the architecture it holds is the configured one; None when ``state`` is not in
    Meta's layout."""
    convnext = model.config.model_type == "dinov3_convnext"
    prefix = (meta_convnext_prefix if convnext else meta_prefix)(state)
    if prefix is None:
        return None
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if convnext:
        there, here, what = describe_meta_convnext(state), describe_hf_convnext(model), "ConvNeXt"
    else:
        there, here = describe_meta(state), describe_hf(model)
        what = there["family"]
    differ = [f"{k}: {there[k]!r} there, {here[k]!r} here" for k in there if there[k] != here[k]]
    if differ:
        fits = _fitting_archs("convnext" if convnext else "vit", there)
        raise DinoWeightsError(
            f"MODEL.DINO.WEIGHTS={weights!r} (a Meta {what} checkpoint) does not fit "
            f"MODEL.DINO.ARCH={arch_name!r} ({'; '.join(differ)}). Set MODEL.DINO.ARCH to the "
            "architecture of the weights" + (f": {' or '.join(fits)}." if fits else "."))
    try:
        converted = (convert_meta_convnext if convnext else convert_meta_dino)(state)
    except MetaCheckpointError as err:
        raise DinoWeightsError(f"MODEL.DINO.WEIGHTS={weights!r}: {err}") from None
    logger.info(f"{weights}: Meta's {what} layout, converted to transformers'")
    return converted


def load_dino_weights(vit, weights, arch_name=""):
    """Load ``weights`` into the transformers ViT or ConvNeXt ``vit`` (built from
    MODEL.DINO.ARCH).

    ``weights`` is a local ``save_pretrained`` directory, a state-dict file (.pth/.pt/.bin/
    .safetensors, optionally wrapped in "model"/"state_dict"/"teacher" and prefixed) in
    transformers' layout or in Meta's (the original facebookresearch/dinov2 and dinov3
    checkpoints, converted on load: ``d2ext.modeling.converters.dino_meta``), or a hub id.
    Every parameter of the model must be found with its shape, else DinoWeightsError names the
    mismatch: weights never load partially by accident.
    """
    if os.path.isfile(weights):
        state = _read_state_dict_file(weights)
    elif os.path.isdir(weights) or (_HUB_ID.fullmatch(weights)
                                    and not weights.endswith(_STATE_DICT_SUFFIXES)):
        state = _from_pretrained(vit, weights, arch_name)
    else:
        raise DinoWeightsError(
            f"MODEL.DINO.WEIGHTS={weights!r}: no such file or directory, and not a hub id "
            "('owner/name'). Give a local save_pretrained directory, a .pth/.safetensors state "
            "dict, or a hub id such as 'facebook/dinov2-small'.")
    own = vit.state_dict()
    converted = _from_meta(vit, state, weights, arch_name)
    if converted is not None:
        state = converted
    state = _strip_prefix(state, own)
    missing = [k for k in own if k not in state]
    wrong = [f"{k}: {tuple(state[k].shape)} in file, {tuple(v.shape)} in {arch_name}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise DinoWeightsError(
            f"MODEL.DINO.WEIGHTS={weights!r} does not fit MODEL.DINO.ARCH={arch_name!r}: "
            f"{len(missing)} parameters missing (e.g. {missing[:3]}), {len(wrong)} of another "
            f"shape (e.g. {wrong[:3]}). Set MODEL.DINO.ARCH to the architecture of the weights.")
    vit.load_state_dict({k: state[k] for k in own})
    unused = len(set(state) - set(own))
    logger.info(f"Loaded DINO weights from {weights} ({len(own)} tensors"
                + (f", {unused} unused)" if unused else ")"))
