"""The EoMT repository's own checkpoints (its model zoo's layout, DINOv3 deltas included):
files written by the package's inverse key map convert back into the same d2ext model, and the
wrong delta/base combinations are refused by name."""
import pytest
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from d2ext.engine import setup_cfg
from d2ext.modeling.backbone.archs import DINO_ARCHS
from d2ext.modeling.backbone.dino_vit import build_hf_vit
from d2ext.modeling.converters import EomtConversionError, convert_eomt
from d2ext.modeling.converters.eomt_zoo import d2ext_state_dict_to_eomt

from helpers import cpu_config

SIZE = 64  # the DINOv2 position grid: 4 x 4 patches of 16


def _tiny_eomt(arch, num_classes):
    opts = ["MODEL.DINO.ARCH", arch, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
            "MODEL.EOMT.NUM_QUERIES", "6", "MODEL.EOMT.ANNEAL_START_ITERS", "[]",
            "MODEL.EOMT.ANNEAL_END_ITERS", "[]"]
    if arch.startswith("dinov2"):  # EoMT runs DINOv2 at patch 16 on a square position grid
        opts += ["MODEL.EOMT.PATCH_SIZE", "16", "MODEL.EOMT.IMAGE_SIZE", str(SIZE)]
    return build_model(cpu_config("quickstart_eomt.yaml", *opts)).eval()


def _perturb(module, scale):
    """Random init hides bugs (layer scales, zero biases): move every tensor."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def _save(state, path):
    """An EoMT training checkpoint: the Lightning module's state dict under "state_dict"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"network." + k: v for k, v in state.items()}}, path)
    return str(path)


def _load(yaml_path):
    cfg = setup_cfg(yaml_path, ["MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def _assert_same_outputs(model, converted):
    images = torch.randn(1, 3, 80, 112)  # normalised, an odd 5 x 7 patch grid
    with torch.no_grad():
        ref, ours = model.predict(images), converted.predict(images)
    assert (ref["pred_logits"] - ours["pred_logits"]).abs().max() <= 1e-4
    assert (ref["pred_masks"] - ours["pred_masks"]).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["dinov2_tiny14", "dinov2_tiny14_reg"])
def test_absolute_dinov2_checkpoint(arch, tmp_path):
    """timm's DINOv2 layout (fused qkv, no class-token position with registers), absolute; the
    task and size from the EoMT yaml."""
    model = _tiny_eomt(arch, num_classes=3)
    _perturb(model, 0.1)
    with torch.no_grad():
        if arch.endswith("_reg"):  # EoMT's timm ViT gives the class token no position
            model.backbone.vit.embeddings.position_embeddings[:, 0] = 0
        model.attn_mask_probs.copy_(torch.tensor([0.0, 1.0]))
    src = _save(d2ext_state_dict_to_eomt(model.state_dict(), model.backbone.arch.family),
                tmp_path / "run" / "last.ckpt")
    eomt_yaml = tmp_path / "eomt_tiny.yaml"
    eomt_yaml.write_text(yaml.safe_dump({
        "model": {"class_path": "training.mask_classification_instance."
                                "MaskClassificationInstance"},
        "data": {"class_path": "datasets.coco_instance.COCOInstance",
                 "init_args": {"img_size": [SIZE, SIZE], "num_classes": 3}}}))
    pth, yaml_path = convert_eomt(src, str(tmp_path / "out" / "eomt"), eomt_config=str(eomt_yaml))
    converted = _load(yaml_path)
    assert converted.attn_mask_probs.tolist() == [0.0, 1.0]
    _assert_same_outputs(model, converted)
    base = tmp_path / "dinov2_base"
    build_hf_vit(DINO_ARCHS[arch]).save_pretrained(base)
    with pytest.raises(EomtConversionError, match="absolute weights.*drop --dino-weights"):
        convert_eomt(src, str(tmp_path / "refused"), dino_weights=str(base),
                     eomt_config=str(eomt_yaml))


def test_dinov3_delta_with_base_and_refusals(tmp_path):
    """A zoo-named DINOv3 delta file plus its base (a save_pretrained directory) equals the
    model it was made from: the encoder's deltas on the base, every other parameter as it is,
    attn_mask_probs on its initial ones, as EoMT's delta_weights adds them."""
    base = _tiny_eomt("dinov3_tiny16", num_classes=80)
    _perturb(base.backbone.vit, 0.1)
    base.backbone.vit.save_pretrained(tmp_path / "dinov3_base")
    model = _tiny_eomt("dinov3_tiny16", num_classes=80)
    model.backbone.vit.load_state_dict(base.backbone.vit.state_dict())
    _perturb(model, 0.02)  # fine-tuning: the encoder moves a little from its base
    _perturb(torch.nn.ModuleList([model.query, model.class_predictor, model.mask_head,
                                  model.upscale_block]), 0.1)
    with torch.no_grad():
        model.attn_mask_probs.copy_(torch.tensor([0.0, 1.0]))
    # The delta the EoMT zoo publishes: trained minus what its module starts from.
    start = base.state_dict()
    params = {k for k, _ in model.named_parameters()}
    delta = {k: v - (start[k] if k.startswith("backbone.vit.") or k not in params else 0)
             for k, v in model.state_dict().items()}
    src = _save(d2ext_state_dict_to_eomt(delta, "dinov3"),
                tmp_path / "coco_instance_eomt_small_64_dinov3" / "pytorch_model.bin")
    pth, yaml_path = convert_eomt(src, str(tmp_path / "out" / "eomt"),
                                  dino_weights=str(tmp_path / "dinov3_base"))
    converted = _load(yaml_path)
    assert converted.attn_mask_probs.tolist() == [0.0, 1.0]
    _assert_same_outputs(model, converted)
    cfg = setup_cfg(yaml_path, ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON and not cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.MODEL.DINO.WEIGHTS) == (
        SIZE, SIZE, "")
    with pytest.raises(EomtConversionError, match="DINOv3 deltas.*--dino-weights"):
        convert_eomt(src, str(tmp_path / "refused"))


def test_unnamed_checkpoint_needs_its_yaml(tmp_path, capsys):
    model = _tiny_eomt("dinov3_tiny16", num_classes=3)
    src = _save(d2ext_state_dict_to_eomt(model.state_dict(), "dinov3"), tmp_path / "last.ckpt")
    from d2ext.cli import convert_eomt as tool

    assert tool.main([src, str(tmp_path / "out.pth")]) == 1
    message = capsys.readouterr().err.strip()
    assert "--eomt-config" in message and len(message.splitlines()) == 1
