"""DINOv3 ConvNeXt backbones: strides 4-32 at any size, transformers and Meta checkpoints, and
Mask R-CNN / Mask2Former-style training on them."""
import json
import math
import os

import pytest
import torch

from d2ext.engine import Trainer, setup_cfg
from d2ext.modeling.backbone import DinoConvNextBackbone, DinoWeightsError
from d2ext.solver import dino_lr_factor_func

from helpers import CONFIGS, tiny_opts

ARCH = "dinov3_convnext_test"


def test_stages_have_strides_4_to_32_at_any_size():
    backbone = DinoConvNextBackbone(ARCH).eval()
    assert backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert [(n, s.stride, s.channels) for n, s in shapes.items()] == [
        ("res2", 4, 16), ("res3", 8, 32), ("res4", 16, 64), ("res5", 32, 128)]
    with torch.no_grad():
        for h, w in [(1, 1), (17, 23), (70, 90), (33, 1000)]:
            out = backbone(torch.randn(1, 3, h, w))
            for name, spec in shapes.items():
                stride = spec.stride
                assert out[name].shape == (1, spec.channels, math.ceil(h / 32) * 32 // stride,
                                           math.ceil(w / 32) * 32 // stride)


def write_meta_convnext(model):
    """transformers' DINOv3ConvNextModel state in Meta's ConvNeXt layout (facebookresearch/dinov3
    models/convnext.py: downsample_layers.i.{0,1}, stages.i.j.{dwconv,norm,pwconv1,pwconv2,
    gamma}, norm), written independently of d2ext's converter."""
    names = {"depthwise_conv": "dwconv", "layer_norm": "norm", "pointwise_conv1": "pwconv1",
             "pointwise_conv2": "pwconv2", "gamma": "gamma"}
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if key.startswith("model.stages.") and parts[3] == "downsample_layers":
            out[f"downsample_layers.{parts[2]}.{parts[4]}.{parts[5]}"] = value
        elif key.startswith("model.stages."):
            suffix = "." + parts[6] if len(parts) > 6 else ""
            out[f"stages.{parts[2]}.{parts[4]}.{names[parts[5]]}{suffix}"] = value
        else:
            out[key.replace("layer_norm", "norm")] = value
    return out


def test_transformers_and_meta_checkpoints_give_the_same_features(tmp_path):
    source = DinoConvNextBackbone(ARCH).eval()
    with torch.no_grad():
        for name, p in source.convnext.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)  # layer scales, norms: every tensor matters
    source.convnext.save_pretrained(tmp_path / "hf")
    torch.save({"model": {"backbone.bottom_up.convnext." + k: v
                          for k, v in source.convnext.state_dict().items()}}, tmp_path / "d2.pth")
    torch.save(write_meta_convnext(source.convnext), tmp_path / "meta.pth")
    image = torch.randn(1, 3, 96, 70)
    with torch.no_grad():
        expected = source(image)
        assert not torch.allclose(DinoConvNextBackbone(ARCH).eval()(image)["res5"],
                                  expected["res5"])
        for weights in ("hf", "d2.pth", "meta.pth"):
            loaded = DinoConvNextBackbone(ARCH, weights=str(tmp_path / weights)).eval()(image)
            for name in expected:
                torch.testing.assert_close(loaded[name], expected[name], atol=1e-5, rtol=0)


def test_a_meta_convnext_of_another_size_names_the_one_it_is(tmp_path):
    from d2ext.modeling.backbone.archs import DINO_CONVNEXT_ARCHS
    from d2ext.modeling.backbone.dino_convnext import build_hf_convnext

    tiny = build_hf_convnext(DINO_CONVNEXT_ARCHS["dinov3_convnext_tiny"])
    torch.save(write_meta_convnext(tiny), tmp_path / "tiny.pth")
    with pytest.raises(DinoWeightsError) as err:
        DinoConvNextBackbone("dinov3_convnext_small", weights=str(tmp_path / "tiny.pth"))
    message = str(err.value)
    assert "a Meta ConvNeXt checkpoint" in message and "depths: (3, 3, 9, 3) there" in message
    assert message.endswith("architecture of the weights: dinov3_convnext_tiny.")
    with pytest.raises(ValueError, match="MODEL.DINO.ARCH: 'dinov3_vits16' is not a ConvNeXt"):
        DinoConvNextBackbone("dinov3_vits16")


def test_freeze_blocks_counts_stages():
    def frozen_stages(backbone):
        return [not any(p.requires_grad for p in stage.parameters())
                for stage in backbone.convnext.model.stages]

    assert frozen_stages(DinoConvNextBackbone(ARCH)) == [False] * 4
    assert frozen_stages(DinoConvNextBackbone(ARCH, freeze_blocks=2)) == [True, True, False, False]
    everything = DinoConvNextBackbone(ARCH, freeze_blocks=-1)
    assert frozen_stages(everything) == [True] * 4
    assert all(p.requires_grad for p in everything.convnext.layer_norm.parameters())


def _read_losses(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [m for m in map(json.loads, f) if "total_loss" in m]


@pytest.mark.slow
@pytest.mark.parametrize("config, quickstart", [
    ("dinov3_convnext_maskrcnn.yaml", "quickstart.yaml"),
    ("dinov3_convnext_mask2former.yaml", "quickstart_mask2former.yaml")])
def test_a_few_iterations_on_the_convnext_backbone(config, quickstart, synthetic_root, tmp_path):
    """The shipped config's backbone and feature wiring on the tiny quickstart's head sizes."""
    shipped = setup_cfg(os.path.join(CONFIGS, config), ["MODEL.DINO.WEIGHTS", ""])
    wiring = ["MODEL.BACKBONE.NAME", shipped.MODEL.BACKBONE.NAME, "MODEL.DINO.ARCH", ARCH,
              "MODEL.SEM_SEG_HEAD.IN_FEATURES", str(list(shipped.MODEL.SEM_SEG_HEAD.IN_FEATURES)),
              "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES",
              str(list(shipped.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES))]
    cfg = setup_cfg(os.path.join(CONFIGS, quickstart),
                    tiny_opts(synthetic_root, tmp_path, max_iter=3) + wiring
                    + ["SOLVER.BACKBONE_MULTIPLIER", "0.1"])
    trainer = Trainer(cfg)
    factor = dino_lr_factor_func(trainer.model, 0.1)
    names = [n for n, _ in trainer.model.named_parameters()]
    assert {factor(n) for n in names if ".convnext." in n} == {0.1}
    assert any(factor(n) == 1.0 for n in names if ".convnext." not in n)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = _read_losses(tmp_path)
    assert losses and all(math.isfinite(m["total_loss"]) for m in losses)
    assert os.path.isfile(tmp_path / "model_final.pth")
