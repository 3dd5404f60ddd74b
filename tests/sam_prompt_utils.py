"""Tiny DINO + SAM models and a two-texture scene for the SAM-prompt tests."""
import numpy as np
import torch
from PIL import Image

from d2ext.modeling.backbone import DinoViTBackbone
from d2ext.modeling.meta_arch import DinoSamPrompt
from d2ext.modeling.sam_prompt import build_tiny_sam
from d2ext.modeling.sam_prompt.prototypes import Reference

SIZE = 128


def texture(kind, height, width):
    """'warm': flat orange with faint noise; 'cool': blue/white stripes 4 px wide."""
    rng = np.random.default_rng(0)
    if kind == "warm":
        image = np.broadcast_to([230, 120, 30], (height, width, 3)) + rng.normal(0, 6, (height, width, 3))
    else:
        stripes = (np.arange(width) // 4) % 2
        image = np.where(stripes[None, :, None], [240, 240, 255], [20, 40, 200]) * np.ones((height, 1, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


def two_texture_scene(vertical):
    """(image (SIZE, SIZE, 3) uint8 RGB, warm mask): warm texture on the left half
    (``vertical``) or the top half, cool texture elsewhere."""
    warm = np.zeros((SIZE, SIZE), dtype=bool)
    if vertical:
        warm[:, :SIZE // 2] = True
    else:
        warm[:SIZE // 2] = True
    image = np.where(warm[..., None], texture("warm", SIZE, SIZE), texture("cool", SIZE, SIZE))
    return image, warm


def tiny_modules(seed=0):
    torch.manual_seed(seed)
    return DinoViTBackbone("dinov3_tiny16"), build_tiny_sam(img_size=SIZE)


def tiny_model(backbone, sam, **kwargs):
    kwargs.setdefault("reference_resize", (SIZE, SIZE))
    return DinoSamPrompt(backbone=backbone, sam=sam, **kwargs)


def write_reference(tmp_path):
    """A reference image (warm top, cool bottom) and its two masks as files; returns
    References for classes 0 = warm and 1 = cool."""
    image, warm = two_texture_scene(vertical=False)
    Image.fromarray(image).save(tmp_path / "reference.png")
    references = []
    for index, mask in enumerate([warm, ~warm]):
        path = tmp_path / f"mask{index}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        references.append(Reference(str(tmp_path / "reference.png"), index, mask_file=str(path)))
    return references


def as_input(image_rgb):
    return {"image": torch.as_tensor(image_rgb).permute(2, 0, 1).float(),
            "height": image_rgb.shape[0], "width": image_rgb.shape[1]}
