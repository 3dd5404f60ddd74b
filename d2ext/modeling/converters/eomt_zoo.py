"""The EoMT repository's own checkpoints (tue-mps/eomt, its model zoo's ``pytorch_model.bin``)
-> a d2ext config and a detectron2 checkpoint of d2ext's ``EoMT`` (tools/convert_eomt.py).

EoMT saves its Lightning module's state dict: the network under ``network.`` (bare, or under
``state_dict``), its ViT under ``network.encoder.backbone.``:

- DINOv2: timm's ``VisionTransformer`` (``vit_*_patch14_reg4_dinov2`` built at patch 16 and the
  input size): ``cls_token``, ``reg_token``, ``pos_embed`` (no row for the class token when the
  model has registers), ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma,
  norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` (the giant's SwiGLU packs gate and up in ``mlp.fc1``),
  ``norm``. The files are absolute.
- DINOv3: transformers' ``DINOv3ViTModel`` renamed by EoMT's ``ViT`` wrapper: ``embeddings`` ->
  ``patch_embed`` (its mask token deleted), ``layer`` -> ``blocks``, ``norm``. The zoo's files
  are *deltas*: EoMT's ``LightningModule`` (``delta_weights``) zeroes every parameter outside the
  encoder, keeps the pretrained DINOv3 encoder and the buffers as built (``attn_mask_probs``
  ones), and adds the file to that state dict (``_add_state_dicts``). ``convert_eomt_checkpoint``
  adds them the same way, the base loaded as MODEL.DINO.WEIGHTS loads it.
- the head: ``q`` (queries), ``class_head``, ``mask_head.{0,2,4}`` (MLP), ``upscale.i.{conv1,
  conv2, norm}``, the ``attn_mask_probs`` buffer (one per block with queries).

``eomt_layout_name`` is the one key map (d2ext name -> EoMT name and which part of the EoMT
tensor); ``eomt_state_dict_to_d2ext`` and ``d2ext_state_dict_to_eomt`` both use it. The task,
input size and classes are not in the weights: they come from the zoo's name
(``coco_panoptic_eomt_large_640_dinov3``) or the EoMT yaml it was trained with.
"""
import logging
import os
import re

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ..backbone.archs import DINO_ARCHS
from .eomt_hf import EomtConversionError, eomt_cfg

logger = logging.getLogger(__name__)

ENCODER = "encoder.backbone."
# Buffers and training-only tensors of EoMT's module that d2ext's EoMT has no counterpart for.
_IGNORED = re.compile(r"(encoder\.pixel_(mean|std)|criterion\..*|.*rope_embeddings\..*)")
# ImageNet statistics of EoMT's ViT wrapper (on 0-1 pixels), d2ext's on 0-255 pixels.
_PIXEL_MEAN, _PIXEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Median |weight| of the encoder's LayerNorms below which a file is a delta: a pretrained ViT's
# norm weights lie around 1, a fine-tuning's change of them around 0.
_DELTA_NORM_LEVEL = 0.25

_HEAD = (("query.weight", "q.weight"), ("class_predictor.", "class_head."),
         ("mask_head.fc1.", "mask_head.0."), ("mask_head.fc2.", "mask_head.2."),
         ("mask_head.fc3.", "mask_head.4."), ("attn_mask_probs", "attn_mask_probs"))
_UPSCALE = re.compile(r"upscale_block\.block\.(\d+)\.(conv1|conv2|layernorm2d)\.(.+)")
_V2_BLOCK = re.compile(r"backbone\.vit\.encoder\.layer\.(\d+)\.(.+)")
_V2_BLOCK_NAMES = {"attention.o_proj.": "attn.proj.", "layer_scale1.lambda1": "ls1.gamma",
                   "layer_scale2.lambda1": "ls2.gamma", "mlp.down_proj.": "mlp.fc2."}
_V2_TOP = {"backbone.vit.embeddings.cls_token": "cls_token",
           "backbone.vit.embeddings.register_tokens": "reg_token",
           "backbone.vit.embeddings.position_embeddings": "pos_embed",
           "backbone.vit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "backbone.vit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "backbone.vit.layernorm.weight": "norm.weight",
           "backbone.vit.layernorm.bias": "norm.bias"}


def eomt_layout_name(key, family):
    """Where d2ext's EoMT tensor ``key`` lives in EoMT's layout (keys relative to ``network.``):
    (EoMT key, part, parts, kind), the tensor being part ``part`` of ``parts`` equal chunks along
    dim 0 of the EoMT tensor (the fused qkv, the giant's packed SwiGLU); kind "no_cls_row": the
    EoMT tensor lacks d2ext's first (class token, zero) position row. None where EoMT keeps no
    such tensor (the ViT's mask token). ``family``: MODEL.DINO.ARCH's family."""
    for ours, theirs in _HEAD:
        if key.startswith(ours):
            return theirs + key[len(ours):], 0, 1, ""
    up = _UPSCALE.fullmatch(key)
    if up:
        index, part, rest = up.groups()
        return f"upscale.{index}.{'norm' if part == 'layernorm2d' else part}.{rest}", 0, 1, ""
    if key.endswith("embeddings.mask_token") or not key.startswith("backbone.vit."):
        return None
    if family == "dinov3":
        rest = key[len("backbone.vit."):]
        for ours, theirs in (("embeddings.", "patch_embed."), ("model.layer.", "blocks."),
                             ("norm.", "norm.")):
            if rest.startswith(ours):
                return ENCODER + theirs + rest[len(ours):], 0, 1, ""
        return None
    if key in _V2_TOP:
        kind = "no_cls_row" if key.endswith("position_embeddings") and family == "dinov2_reg" \
            else ""
        return ENCODER + _V2_TOP[key], 0, 1, kind
    block = _V2_BLOCK.fullmatch(key)
    if not block:
        return None
    index, rest = block.groups()
    name = f"{ENCODER}blocks.{index}."
    qkv = re.fullmatch(r"attention\.([qkv])_proj\.(weight|bias)", rest)
    if qkv:
        return f"{name}attn.qkv.{qkv.group(2)}", "qkv".index(qkv.group(1)), 3, ""
    glu = re.fullmatch(r"mlp\.(gate|up)_proj\.(weight|bias)", rest)
    if glu:  # timm's SwiGLUPacked: act(first half) * second half, as transformers' gate * up
        return f"{name}mlp.fc1.{glu.group(2)}", 0 if glu.group(1) == "gate" else 1, 2, ""
    for ours, theirs in _V2_BLOCK_NAMES.items():
        if rest.startswith(ours):
            return name + theirs + rest[len(ours):], 0, 1, ""
    return name + rest, 0, 1, ""  # norm1, norm2, mlp.fc1, mlp.fc2 keep their names


def eomt_state_dict_to_d2ext(state, model_state, family):
    """EoMT-layout ``state`` (keys relative to ``network.``) -> {d2ext key: tensor} for every
    key of ``model_state`` (d2ext's EoMT state dict) that EoMT stores. Raises
    EomtConversionError naming missing tensors, tensors of another shape, and unused ones."""
    out, used, missing, wrong = {}, set(), [], []
    for key, own in model_state.items():
        where = eomt_layout_name(key, family)
        if where is None:
            continue
        name, part, parts, kind = where
        if name not in state:
            missing.append(name)
            continue
        used.add(name)
        value = state[name]
        if parts > 1:
            value = value.chunk(parts, dim=0)[part]
        if kind == "no_cls_row":
            value = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
        if value.shape != own.shape:
            wrong.append(f"{name}: {tuple(value.shape)} vs {tuple(own.shape)}")
            continue
        out[key] = value.to(own.dtype)
    unused = [k for k in state if k not in used and not _IGNORED.fullmatch(k)]
    if missing or wrong or unused:
        raise EomtConversionError(
            f"EoMT checkpoint -> d2ext EoMT: {len(missing)} tensors missing (e.g. "
            f"{sorted(set(missing))[:3]}), {len(wrong)} of another shape ({wrong[:3]}), "
            f"{len(unused)} unused (e.g. {unused[:3]}); the file is not an EoMT checkpoint of "
            "the architecture read from it.")
    return out


def d2ext_state_dict_to_eomt(model_state, family):
    """d2ext's EoMT state dict -> EoMT's layout (keys relative to ``network.``, the inverse of
    ``eomt_state_dict_to_d2ext``; with its ImageNet pixel statistics)."""
    groups = {}
    for key, value in model_state.items():
        where = eomt_layout_name(key, family)
        if where is not None:
            name, part, parts, kind = where
            if kind == "no_cls_row":
                value = value[:, 1:]
            groups.setdefault(name, [None] * parts)[part] = value
    out = {name: parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
           for name, parts in groups.items()}
    out["encoder.pixel_mean"] = torch.tensor(_PIXEL_MEAN).reshape(1, -1, 1, 1)
    out["encoder.pixel_std"] = torch.tensor(_PIXEL_STD).reshape(1, -1, 1, 1)
    return out


# -- reading a file ---------------------------------------------------------------------------

def read_eomt_checkpoint(path):
    """The network's state dict (keys relative to ``network.``) of an EoMT checkpoint file:
    bare, or under "state_dict" (Lightning) or "model"."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise EomtConversionError(f"{path}: not a readable PyTorch checkpoint ({err}).") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    prefix = next((k[: -len("q.weight")] for k in state if k.endswith("q.weight") and
                   f"{k[: -len('q.weight')]}class_head.weight" in state), None) \
        if isinstance(state, dict) else None
    if prefix is None:
        raise EomtConversionError(
            f"{path}: no EoMT network in it (no 'network.q.weight' with 'network.class_head."
            "weight'); give an EoMT repository checkpoint (pytorch_model.bin), or a transformers "
            "EoMT directory / hub id.")
    # A module saved while compiled names its parts "_orig_mod." (EoMT strips it on saving).
    return {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state.items()
            if k.startswith(prefix)}


def describe_eomt(state):
    """What the weights fix: family, width, depth, patch, mlp (per branch), gated, num_queries,
    num_classes, num_blocks (blocks with queries), num_upscale, pos_grid (DINOv2: side of the
    position grid, 0 when not square)."""
    e = ENCODER
    dinov3 = f"{e}patch_embed.patch_embeddings.weight" in state
    if not dinov3 and f"{e}patch_embed.proj.weight" not in state:
        raise EomtConversionError("EoMT checkpoint: its encoder is neither timm's DINOv2 ViT "
                                  "(patch_embed.proj) nor transformers' DINOv3 (patch_embed."
                                  "patch_embeddings); d2ext cannot build it.")
    patch_weight = state[f"{e}patch_embed.patch_embeddings.weight" if dinov3
                         else f"{e}patch_embed.proj.weight"]
    depth = 1 + max(int(m.group(1)) for m in
                    (re.match(re.escape(e) + r"blocks\.(\d+)\.", k) for k in state) if m)
    if dinov3:
        gated = f"{e}blocks.0.mlp.gate_proj.weight" in state
    else:  # timm's packed SwiGLU: fc1 gives gate and up, twice fc2's input
        gated = state[f"{e}blocks.0.mlp.fc1.weight"].shape[0] == \
            2 * state[f"{e}blocks.0.mlp.fc2.weight"].shape[1]
    if dinov3:
        mlp = state[f"{e}blocks.0.mlp.{'gate_proj' if gated else 'up_proj'}.weight"].shape[0]
        family = "dinov3"
    else:
        mlp = state[f"{e}blocks.0.mlp.fc1.weight"].shape[0] // (2 if gated else 1)
        family = "dinov2_reg" if f"{e}reg_token" in state else "dinov2"
    pos_grid = 0
    if not dinov3:
        rows = state[f"{e}pos_embed"].shape[1] - (0 if family == "dinov2_reg" else 1)
        pos_grid = round(rows ** 0.5) if round(rows ** 0.5) ** 2 == rows else 0
    probs = state.get("attn_mask_probs")
    if probs is None:
        raise EomtConversionError("EoMT checkpoint without 'network.attn_mask_probs': the "
                                  "number of blocks with queries is unknown.")
    return dict(family=family, width=patch_weight.shape[0], depth=depth,
                patch=patch_weight.shape[-1], mlp=mlp, gated=gated,
                num_queries=state["q.weight"].shape[0],
                num_classes=state["class_head.weight"].shape[0] - 1,
                num_blocks=probs.numel(),
                num_upscale=len({k.split(".")[1] for k in state if k.startswith("upscale.")}),
                pos_grid=pos_grid)


def _branch_width(arch):
    """The MLP width of each branch that transformers builds for ``arch`` (DINOv2's SwiGLU:
    2/3 of it, rounded up to a multiple of 8)."""
    if arch.gated and arch.family.startswith("dinov2"):
        return (int(arch.mlp * 2 / 3) + 7) // 8 * 8
    return arch.mlp


def find_arch(desc):
    for name, arch in DINO_ARCHS.items():
        if (arch.family, arch.width, arch.depth, _branch_width(arch), arch.gated) == (
                desc["family"], desc["width"], desc["depth"], desc["mlp"], desc["gated"]) and (
                arch.family != "dinov3" or arch.patch == desc["patch"]):
            return name
    raise EomtConversionError(
        f"No MODEL.DINO.ARCH in d2ext.modeling.backbone.archs.DINO_ARCHS matches this EoMT "
        f"checkpoint's ViT ({desc['family']}, width {desc['width']}, {desc['depth']} blocks, MLP "
        f"{desc['mlp']}{', gated' if desc['gated'] else ''}, patch {desc['patch']}); add an "
        "entry for it to DINO_ARCHS.")


def norm_weight_level(state):
    """Median |weight| of the encoder's LayerNorms (every block's two and the final one)."""
    norms = [v.float().abs().flatten() for k, v in state.items() if k.startswith(ENCODER)
             and re.search(r"(^|\.)norm\d?\.weight$", k[len(ENCODER):])]
    return torch.cat(norms).median().item() if norms else float("nan")


# -- task, input size and classes: the zoo's name or the EoMT yaml ----------------------------

# (dataset, task) -> (classes, detectron2's built-in validation set of the same classes)
ZOO_DATASETS = {("coco", "panoptic"): (133, "coco_2017_val_panoptic"),
                ("coco", "instance"): (80, "coco_2017_val"),
                ("ade20k", "semantic"): (150, "ade20k_sem_seg_val"),
                ("ade20k", "panoptic"): (150, "ade20k_panoptic_val"),
                ("cityscapes", "semantic"): (19, "cityscapes_fine_sem_seg_val")}
_DEFAULT_SIZE = {"coco": 640, "ade20k": 640, "cityscapes": 1024}
ZOO_NAME = re.compile(r"(coco|ade20k|ade|cityscapes)_(panoptic|semantic|instance)_eomt_"
                      r"(small|base|large|giant|7b)_(\d+)")


def zoo_entry_from_name(text):
    """{"dataset", "task", "size"} from an EoMT zoo name anywhere in ``text`` (a hub id, a
    path), or None."""
    found = ZOO_NAME.findall(text.lower())
    if not found:
        return None
    dataset, task, _, size = found[-1]
    dataset = "ade20k" if dataset == "ade" else dataset
    return {"dataset": dataset, "task": task, "size": int(size), "source": "name"}


def zoo_entry_from_yaml(path):
    """The same from an EoMT training yaml (tue-mps/eomt configs/...): the task from
    ``model.class_path``, the dataset, size and classes from ``data``."""
    import yaml  # lazy: only this tool reads EoMT's yamls

    try:
        with open(path) as f:
            conf = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise EomtConversionError(f"--eomt-config {path}: cannot read it ({err}).") from None
    model, data = conf.get("model") or {}, conf.get("data") or {}
    task = re.search(r"mask_classification_(panoptic|semantic|instance)",
                     str(model.get("class_path", "")))
    dataset = re.search(r"datasets\.(coco|ade20k|cityscapes)_", str(data.get("class_path", "")))
    if not task or not dataset:
        raise EomtConversionError(
            f"--eomt-config {path}: not an EoMT training yaml (model.class_path "
            f"{model.get('class_path')!r}, data.class_path {data.get('class_path')!r}); give one "
            "of tue-mps/eomt's configs/*/*/*/eomt_*.yaml.")
    init = data.get("init_args") or {}
    entry = {"dataset": dataset.group(1), "task": task.group(1), "source": path}
    # Without data.init_args.img_size EoMT trains at its dataset's default size, except where
    # the run's name says otherwise: the published DINOv3 1280 yamls name "..._1280_dinov3"
    # and leave img_size out (the zoo lists them at 1280).
    named = zoo_entry_from_name(str(((conf.get("trainer") or {}).get("logger") or {})))
    size = init.get("img_size") or (named["size"] if named else None) or (
        512 if entry["dataset"] == "ade20k" and entry["task"] == "semantic"
        else _DEFAULT_SIZE[entry["dataset"]])
    entry["size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
    if init.get("num_classes"):
        entry["num_classes"] = int(init["num_classes"])
    entry["delta_weights"] = bool((model.get("init_args") or {}).get("delta_weights", False))
    return entry


# -- the conversion ---------------------------------------------------------------------------

def _eomt_zoo_cfg(desc, arch, entry, weights):
    cfg = eomt_cfg(arch, desc["num_classes"], desc["num_queries"], desc["num_blocks"], weights)
    cfg.MODEL.EOMT.NUM_UPSCALE_BLOCKS = desc["num_upscale"]
    native = DINO_ARCHS[arch].patch
    cfg.MODEL.EOMT.PATCH_SIZE = desc["patch"] if desc["patch"] != native else 0
    cfg.MODEL.EOMT.IMAGE_SIZE = desc["pos_grid"] * desc["patch"]
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [255 * m for m in _PIXEL_MEAN]
    cfg.MODEL.PIXEL_STD = [255 * s for s in _PIXEL_STD]
    size, task = entry["size"], entry["task"]
    test = cfg.MODEL.MASK_FORMER.TEST
    test.INSTANCE_ON, test.SEMANTIC_ON, test.PANOPTIC_ON = (
        task == "instance", task == "semantic", task == "panoptic")
    # EoMT's evaluation: instance/panoptic fit the longer side to the input size (then pad to
    # the square), semantic resizes the shorter side to it (then slides square windows).
    cfg.MODEL.EOMT.TEST.PROTOCOL = "eomt"
    cfg.INPUT.IMAGE_SIZE = size
    cfg.INPUT.MIN_SIZE_TEST = size
    # (semantic: EoMT leaves the longer side uncapped; 8x keeps detectron2's resize finite)
    cfg.INPUT.MAX_SIZE_TEST = size if task != "semantic" else 8 * size
    if task == "semantic":  # the label PNGs' "ignore" (detectron2's and EoMT's datasets)
        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    dataset = ZOO_DATASETS.get((entry["dataset"], task))
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = (dataset[1],) if dataset and dataset[1] in DatasetCatalog.list() else ()
    return cfg


def _check_entry(desc, entry, src):
    if entry is None:
        raise EomtConversionError(
            f"{src}: the task, input size and classes of an EoMT checkpoint are not in its "
            "weights, and SRC names no EoMT zoo model (e.g. coco_panoptic_eomt_large_640); "
            "pass --eomt-config with the EoMT yaml it was trained with.")
    known = ZOO_DATASETS.get((entry["dataset"], entry["task"]))
    classes = entry.get("num_classes") or (known[0] if known else None)
    if classes is not None and classes != desc["num_classes"]:
        raise EomtConversionError(
            f"{src}: the class head has {desc['num_classes']} classes, but {entry['source']} "
            f"says {entry['dataset']} {entry['task']} with {classes}; pass --eomt-config with "
            "the yaml the checkpoint was trained with.")
    if desc["pos_grid"] and desc["pos_grid"] * desc["patch"] != entry["size"]:
        raise EomtConversionError(
            f"{src}: the position embeddings are laid out for {desc['pos_grid'] * desc['patch']}"
            f" px, but {entry['source']} says {entry['size']}; pass --eomt-config with the yaml "
            "the checkpoint was trained with.")


def _is_delta(state, weights, base, dino_weights):
    """(whether ``state`` holds deltas, the evidence in words). Without a base: the encoder's
    LayerNorm weights lie near 0 (a fine-tuning's change) rather than near 1 (weights). With
    one (``weights``: the file in d2ext's names, ``base``: the model with BASE loaded): a delta
    is smaller than its distance to BASE; weights fine-tuned from BASE lie close to it."""
    level = norm_weight_level(state)
    what = f"its encoder's LayerNorm weights have median |w| {level:.3g}"
    if not dino_weights:
        return level < _DELTA_NORM_LEVEL, what
    norms = [k for k in weights if k.startswith("backbone.vit.") and
             re.search(r"(^|\.)(norm\d?|layernorm)\.weight$", k)]
    own = torch.cat([weights[k].float().flatten() for k in norms])
    off = own - torch.cat([base[k].float().flatten() for k in norms])
    return bool(own.norm() < off.norm()), (
        f"{what}; their norm is {own.norm():.3g}, their distance to {dino_weights}'s "
        f"{off.norm():.3g}")


def _check_delta(delta, what, desc, src, dino_weights, entry):
    if delta and desc["family"] != "dinov3":
        raise EomtConversionError(
            f"{src} looks like a delta file ({what}), but its ViT is DINOv2: EoMT's DINOv2 "
            "checkpoints are absolute and d2ext does not rebuild timm's resampled DINOv2 base; "
            "convert the absolute checkpoint.")
    if delta and not dino_weights:
        arch = DINO_ARCHS[find_arch(desc)]
        raise EomtConversionError(
            f"{src} holds DINOv3 deltas ({what}, near 0), not weights: pass the DINOv3 weights "
            f"they were trained from as --dino-weights BASE (e.g. {arch.hub_id or 'a hub id'}, "
            "a save_pretrained directory, or Meta's .pth), as EoMT's delta_weights adds them.")
    if not delta and dino_weights:
        raise EomtConversionError(
            f"{src} holds absolute weights ({what}), not deltas: drop --dino-weights "
            f"{dino_weights} (adding a base to it would double the encoder).")
    if entry and entry.get("delta_weights") and not delta:
        logger.warning(f"{entry['source']} trains with delta_weights, but {src} holds absolute "
                       "weights: converted as absolute.")


def convert_eomt_checkpoint(src, dst, dino_weights="", eomt_config="", name=None):
    """Convert the EoMT repository checkpoint file ``src`` into ``dst`` (.pth) and its config
    (``dst`` with .yaml). A DINOv3 delta file needs ``dino_weights`` (any MODEL.DINO.WEIGHTS
    source), an absolute one refuses it. The task, input size and classes come from
    ``eomt_config`` (an EoMT yaml) or the zoo name in ``name`` (default: ``src``). Returns
    (checkpoint path, yaml path)."""
    state = read_eomt_checkpoint(src)
    desc = describe_eomt(state)
    arch = find_arch(desc)
    entry = zoo_entry_from_yaml(eomt_config) if eomt_config else zoo_entry_from_name(
        name or src)
    _check_entry(desc, entry, src)
    if desc["family"] == "dinov3" and DINO_ARCHS[arch].gated:
        raise EomtConversionError(
            f"{src}: EoMT's head uses GELU, d2ext's the ViT's activation (SiLU for {arch}); "
            "d2ext cannot reproduce this checkpoint.")
    if not dino_weights:  # refuse a delta before building anything
        _check_delta(*_is_delta(state, None, None, ""), desc, src, "", entry)
    dst = os.path.abspath(dst if dst.endswith(".pth") else dst + ".pth")
    cfg = _eomt_zoo_cfg(desc, arch, entry, dst)
    build_cfg = cfg.clone()
    build_cfg.MODEL.DEVICE = "cpu"
    build_cfg.MODEL.DINO.WEIGHTS = dino_weights  # BASE, loaded as MODEL.DINO.WEIGHTS loads it
    from ..backbone.dino_weights import DinoWeightsError  # lazy: it imports converters

    try:
        model = build_model(build_cfg).eval()
    except DinoWeightsError as err:  # name the option the user typed
        raise EomtConversionError(f"--dino-weights {dino_weights}: {err}") from None
    base = model.state_dict()
    weights = eomt_state_dict_to_d2ext(state, base, desc["family"])
    delta = False
    if dino_weights:
        delta, what = _is_delta(state, weights, base, dino_weights)
        _check_delta(delta, what, desc, src, dino_weights, entry)
    if delta:
        # EoMT's delta_weights: the encoder as pretrained, every other parameter zero, the
        # buffers as built; the file is added to that.
        params = {k for k, _ in model.named_parameters()}
        weights = {k: (base[k] if k.startswith("backbone.vit.") or k not in params
                       else torch.zeros_like(base[k])).float() + v.float()
                   for k, v in weights.items()}
    model.load_state_dict({**base, **weights})  # strict: proves the checkpoint fits the config
    probs = model.attn_mask_probs.tolist()
    if any(p != 0 for p in probs):
        logger.warning(f"{src}: attn_mask_probs {probs} after conversion: masked attention "
                       "stays on in those blocks, as in EoMT's evaluation of this file.")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    saved = {"model": model.state_dict(), "__author__": f"converted from {src}"}
    classes = _class_entry(cfg)
    if classes:
        saved["classes"] = classes
    torch.save(saved, dst)
    yaml_path = dst[: -len(".pth")] + ".yaml"
    with open(yaml_path, "w") as f:
        f.write(f"# d2ext EoMT converted from the EoMT checkpoint {src!r}"
                + (f" (deltas on {dino_weights!r})" if delta else "") + f": {entry['dataset']} "
                f"{entry['task']} at {entry['size']} px, {desc['num_classes']} classes.\n")
        f.write(cfg.dump())
    return dst, yaml_path


def _class_entry(cfg):
    """The checkpoint's "classes" entry from the test dataset's built-in metadata, where it
    names as many classes as the model has."""
    from ..meta_arch import capabilities  # lazy: the meta-architectures import converters

    if not cfg.DATASETS.TEST:
        return None
    name = cfg.DATASETS.TEST[0]
    field = capabilities(cfg).class_metadata
    names = MetadataCatalog.get(name).get(field)
    if names is None or len(names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        return None
    return {"dataset": name, field: [str(n) for n in names]}


_CHECKPOINT_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")


def _hub_checkpoint(src):
    """An EoMT hub repository's pytorch_model.bin (downloaded or from the local cache)."""
    from huggingface_hub import hf_hub_download  # lazy: import d2ext stays light

    try:
        return hf_hub_download(src, "pytorch_model.bin")
    except Exception as err:  # any hub failure (offline, gated, missing) ends in one line
        raise EomtConversionError(
            f"{src!r}: its pytorch_model.bin is neither downloadable nor in the local hub cache "
            f"({type(err).__name__}: {err}); download it elsewhere (`hf download {src} "
            "pytorch_model.bin --local-dir DIR`) and pass DIR/pytorch_model.bin as SRC.") from None


def convert_eomt(src, dst, dino_weights="", eomt_config=""):
    """``tools/convert_eomt.py``: ``src`` is a transformers EoMT (save_pretrained directory or
    hub id, ``convert_hf_eomt``) or an EoMT repository checkpoint (a file, a directory holding
    pytorch_model.bin without a config.json, or a hub id given with ``dino_weights``:
    ``convert_eomt_checkpoint``). Returns (checkpoint path, yaml path)."""
    from .eomt_hf import convert_hf_eomt

    path = src
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "config.json")) \
            and os.path.isfile(os.path.join(src, "pytorch_model.bin")):
        path = os.path.join(src, "pytorch_model.bin")
    elif not os.path.exists(src) and dino_weights and not src.endswith(_CHECKPOINT_SUFFIXES):
        path = _hub_checkpoint(src)
    if os.path.isfile(path):
        return convert_eomt_checkpoint(path, dst, dino_weights, eomt_config, name=src)
    if not os.path.exists(src) and src.endswith(_CHECKPOINT_SUFFIXES):
        raise EomtConversionError(f"{src}: no such file.")
    if dino_weights:
        raise EomtConversionError(
            f"--dino-weights {dino_weights}: {src} is a transformers EoMT, whose weights are "
            "complete; --dino-weights is for the EoMT zoo's DINOv3 delta files only.")
    if eomt_config:
        raise EomtConversionError(f"--eomt-config {eomt_config}: {src} is a transformers EoMT, "
                                  "whose config already says what it is; drop --eomt-config.")
    return convert_hf_eomt(src, dst)
