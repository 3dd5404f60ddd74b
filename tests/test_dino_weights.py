import os

import pytest
import torch

from d2ext.modeling.backbone import DinoViTBackbone, DinoWeightsError

from helpers import CONFIGS


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 96, 128)


@pytest.mark.parametrize("arch", ["dinov2_tiny14", "dinov2_tiny14_reg", "dinov3_tiny16"])
def test_weights_round_trip_directory_and_pth(tmp_path, image, arch):
    torch.manual_seed(0)
    source = DinoViTBackbone(arch).eval()
    source.vit.save_pretrained(tmp_path / "hf")
    # A detector checkpoint's keys carry the model's prefix; the loader strips it.
    torch.save({"model": {"backbone.net.vit." + k: v for k, v in source.vit.state_dict().items()}},
               tmp_path / "detector.pth")
    torch.manual_seed(1)
    random = DinoViTBackbone(arch).eval()
    from_dir = DinoViTBackbone(arch, weights=str(tmp_path / "hf")).eval()
    from_pth = DinoViTBackbone(arch, weights=str(tmp_path / "detector.pth")).eval()
    with torch.no_grad():
        expected = source(image)["vit"]
        assert not torch.allclose(random(image)["vit"], expected)
        assert torch.equal(from_dir(image)["vit"], expected)
        assert torch.equal(from_pth(image)["vit"], expected)


def test_weights_of_another_architecture_are_refused(tmp_path):
    DinoViTBackbone("dinov3_tiny16").vit.save_pretrained(tmp_path / "v3")
    torch.save(DinoViTBackbone("dinov2_tiny14").vit.state_dict(), tmp_path / "v2.pth")
    with pytest.raises(DinoWeightsError, match="does not fit MODEL.DINO.ARCH='dinov2_tiny14'"):
        DinoViTBackbone("dinov2_tiny14", weights=str(tmp_path / "v3"))
    with pytest.raises(DinoWeightsError, match="does not fit"):
        DinoViTBackbone("dinov3_tiny16", weights=str(tmp_path / "v2.pth"))


def test_offline_hub_id_error_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import; set its constant too so nothing is tried
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    hub_id = "facebook/dinov3-vits16-pretrain-lvd1689m"
    with pytest.raises(DinoWeightsError) as err:
        DinoViTBackbone("dinov3_vits16", weights=hub_id)
    message = str(err.value)
    for needle in (hub_id, "HF_HUB_OFFLINE=1", str(tmp_path), "gated", "save_pretrained",
                   "MODEL.DINO.WEIGHTS"):
        assert needle in message


def test_missing_path_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "dino.pth")
    with pytest.raises(DinoWeightsError, match="no such file"):
        DinoViTBackbone("dinov3_tiny16", weights=missing)


@pytest.mark.parametrize("config", ["quickstart.yaml", "quickstart_mask2former.yaml"])
def test_dino_weights_from_a_d2ext_checkpoint(config, tmp_path):
    # MODEL.DINO.WEIGHTS may be a whole d2ext model (e.g. output/quickstart/model_final.pth):
    # its ViT is found under its prefix, not under a pyramid key that ends like a ViT key.
    from detectron2.modeling import build_model

    from d2ext.engine import setup_cfg

    cfg = setup_cfg(os.path.join(CONFIGS, config), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    vit = DinoViTBackbone(cfg.MODEL.DINO.ARCH, weights=path)
    for name, tensor in vit.state_dict().items():
        assert torch.equal(tensor, model.backbone.net.state_dict()[name])
