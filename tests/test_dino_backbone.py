import pytest
import torch
from detectron2.modeling import build_backbone
from detectron2.structures import ImageList

from d2ext.modeling.backbone import DinoViTBackbone
from d2ext.modeling.backbone.archs import DINO_ARCHS
from d2ext.modeling.backbone.dino_vit import build_hf_vit
from d2ext.solver import dino_lr_factor_func

TINY = ["dinov2_tiny14", "dinov2_tiny14_reg", "dinov3_tiny16"]


@pytest.mark.parametrize("arch", TINY)
def test_vit_map_is_stride_16_at_odd_sizes(arch):
    backbone = DinoViTBackbone(arch, out_blocks=(1, -1)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 333, 517))
    assert out["vit"].shape == (2, 2 * DINO_ARCHS[arch].width, 21, 33)  # ceil(333/16), ceil(517/16)
    assert backbone.output_shape()["vit"].channels == 2 * DINO_ARCHS[arch].width
    assert backbone.output_shape()["vit"].stride == 16


@pytest.mark.parametrize("arch", ["dinov2_tiny14", "dinov3_tiny16"])
def test_sfp_pyramid_shapes_and_strides(tiny_cfg, arch):
    cfg = tiny_cfg.clone()
    cfg.MODEL.DINO.ARCH = arch
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                                                        "p6": 64}
    assert backbone.size_divisibility == 32
    padded = ImageList.from_tensors([torch.zeros(3, 333, 517)], backbone.size_divisibility,
                                    padding_constraints=backbone.padding_constraints)
    assert tuple(padded.tensor.shape[-2:]) == (352, 544)  # what GeneralizedRCNN feeds it
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 352, 544))
    for name, spec in shapes.items():
        assert out[name].shape == (1, cfg.MODEL.FPN.OUT_CHANNELS, -(-352 // spec.stride),
                                   -(-544 // spec.stride))


@pytest.mark.parametrize("arch", ["dinov2_tiny14", "dinov3_tiny16"])
def test_token_grid_is_aligned_with_16px_cells(arch):
    """Changing only input cell (r, c) may change only token (r, c) of the patch embedding:
    a patch-14 model declared as stride 16 without resampling would fail this."""
    backbone = DinoViTBackbone(arch).eval()
    captured = []
    backbone.vit.embeddings.patch_embeddings.register_forward_hook(
        lambda m, i, o: captured.append(o.flatten(2).transpose(1, 2) if o.dim() == 4 else o))
    x = torch.randn(1, 3, 80, 112)  # a 5 x 7 grid of 16-px cells
    y = x.clone()
    r, c = 3, 4
    y[..., 16 * r:16 * r + 16, 16 * c:16 * c + 16] += 5.0
    with torch.no_grad():
        backbone(x)
        backbone(y)
    changed = (captured[0] - captured[1]).abs().amax(-1).reshape(5, 7) > 1e-5
    expected = torch.zeros(5, 7, dtype=torch.bool)
    expected[r, c] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("arch, millions", [
    ("dinov2_vits14", 22.1), ("dinov2_vitb14", 86.6), ("dinov2_vitl14", 304.4),
    ("dinov2_vitg14", 1136.5), ("dinov2_vitb14_reg", 86.6), ("dinov3_vits16", 21.6),
    ("dinov3_vitsplus16", 28.7), ("dinov3_vitb16", 85.7), ("dinov3_vitl16", 303.1),
    ("dinov3_vithplus16", 840.6)])
def test_named_architectures_have_the_published_sizes(arch, millions):
    with torch.device("meta"):  # no memory, no weights: only the shapes
        vit = build_hf_vit(DINO_ARCHS[arch])
    assert sum(p.numel() for p in vit.parameters()) / 1e6 == pytest.approx(millions, rel=0.01)


def test_unknown_arch_and_bad_blocks_are_named():
    with pytest.raises(ValueError, match="MODEL.DINO.ARCH.*dinov3_vitz16"):
        DinoViTBackbone("dinov3_vitz16")
    with pytest.raises(ValueError, match="MODEL.DINO.OUT_BLOCKS"):
        DinoViTBackbone("dinov3_tiny16", out_blocks=(4,))


def test_freezing():
    def trainable(backbone):
        return {n for n, p in backbone.vit.named_parameters() if p.requires_grad}

    assert not trainable(DinoViTBackbone("dinov3_tiny16", freeze_blocks=-1))
    names = trainable(DinoViTBackbone("dinov3_tiny16", freeze_blocks=2))
    assert not any(n.startswith("embeddings") or ".layer.0." in n or ".layer.1." in n
                   for n in names)
    assert any(".layer.2." in n for n in names) and any(".layer.3." in n for n in names)
    # unfrozen: everything but the pre-training-only mask token trains
    everything = {n for n, _ in DinoViTBackbone("dinov3_tiny16").vit.named_parameters()}
    assert trainable(DinoViTBackbone("dinov3_tiny16")) == everything - {"embeddings.mask_token"}


def test_layer_decay_and_backbone_multiplier(tiny_cfg):
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg)
    factor = dino_lr_factor_func(model, backbone_multiplier=0.5, layer_decay=0.8)
    prefix = "backbone.net.vit."
    assert factor(prefix + "embeddings.patch_embeddings.weight") == pytest.approx(0.5 * 0.8 ** 5)
    assert factor(prefix + "model.layer.0.mlp.up_proj.weight") == pytest.approx(0.5 * 0.8 ** 4)
    assert factor(prefix + "model.layer.3.norm1.weight") == pytest.approx(0.5 * 0.8)
    assert factor(prefix + "norm.weight") == pytest.approx(0.5)
    assert factor("roi_heads.box_predictor.cls_score.weight") == 1.0
