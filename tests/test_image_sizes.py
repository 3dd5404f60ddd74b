"""Every head's predictor takes images of any size, thin and tiny ones included, and returns
outputs at the image's size; the training mappers take them too."""
import os

import numpy as np
import pytest
from detectron2.data import transforms as T

from d2ext.data.dataset_mappers import MaskFormerInstanceDatasetMapper
from d2ext.engine import load_predictor, setup_cfg

from helpers import CONFIGS, sam3_opts

SIZES = [(1, 1), (1, 4000), (4000, 1), (17, 23), (20, 1500), (3000, 4000)]


@pytest.mark.parametrize("config", ["quickstart.yaml", "quickstart_mask2former.yaml",
                                    "quickstart_eomt.yaml", "quickstart_semseg.yaml",
                                    "sam_tiny.yaml"])
def test_predictor_outputs_match_any_image_size(config, tmp_path):
    cfg = setup_cfg(os.path.join(CONFIGS, config), ["MODEL.DEVICE", "cpu",
                                                    "OUTPUT_DIR", str(tmp_path)])
    predictor = load_predictor(cfg)
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        out = predictor(rng.integers(0, 256, (h, w, 3), np.uint8))
        if "instances" in out:
            inst = out["instances"]
            assert inst.image_size == (h, w) and inst.pred_masks.shape[1:] == (h, w)
        else:
            assert out["sem_seg"].shape[1:] == (h, w)


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    """PNGs of every awkward size (one in a subfolder), plain colour with a bright square."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("awkward")
    (folder / "sub").mkdir()
    for i, (h, w) in enumerate(SIZES):
        image = np.full((h, w, 3), 40 + 30 * i, np.uint8)
        image[h // 4:h // 2 + 1, w // 4:w // 2 + 1] = 230
        Image.fromarray(image).save(folder / ("sub" if i % 2 else "") / f"{h}x{w}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_sam3_opts(sam3_dir):
    """Overrides that run configs/sam3_text.yaml on a tiny random SAM 3."""
    return [*sam3_opts(sam3_dir), "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0"]


@pytest.mark.parametrize("config", ["quickstart.yaml", "quickstart_mask2former.yaml",
                                    "quickstart_eomt.yaml", "quickstart_semseg.yaml",
                                    "sam_tiny.yaml", "sam3_text.yaml"])
def test_demo_draws_every_awkward_size_for_every_head(config, awkward_folder, tmp_path,
                                                       tiny_sam3_opts):
    from PIL import Image

    from d2ext.cli import demo

    out = tmp_path / "drawn"
    text_prompt = ["--classes", "duck", "panda"] if config == "sam3_text.yaml" else []
    assert demo.main(["--config-file", os.path.join(CONFIGS, config), "--input",
                      str(awkward_folder), "--output", str(out), "--confidence-threshold", "0",
                      *text_prompt, "--opts", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
                      # random weights give ragged masks of thousands of polygons: draw few
                      "TEST.DETECTIONS_PER_IMAGE", "3",
                      *(tiny_sam3_opts if config == "sam3_text.yaml" else [])]) == 0
    for i, (h, w) in enumerate(SIZES):
        drawn = out / ("sub" if i % 2 else "") / f"{h}x{w}.png.png"
        with Image.open(drawn) as image:
            assert image.size == (w, h)


def test_large_images_are_drawn_at_a_bounded_size_with_the_predictions_resampled():
    import cv2
    import torch
    from detectron2.data.catalog import Metadata
    from detectron2.structures import Boxes, Instances

    from d2ext.engine.predictor import downscale_outputs, draw_predictions

    h, w = 300, 500
    mask = np.zeros((h, w), bool)
    mask[100:250, 40:200] = True
    instances = Instances((h, w), pred_masks=torch.from_numpy(mask)[None],
                          pred_boxes=Boxes(torch.tensor([[40.0, 100.0, 200.0, 250.0]])),
                          scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    small = downscale_outputs({"instances": instances}, (h, w), (60, 100))["instances"]
    assert small.image_size == (60, 100)
    expected = cv2.resize(mask.astype(np.uint8), (100, 60), interpolation=cv2.INTER_NEAREST_EXACT)
    assert np.array_equal(small.pred_masks[0].numpy(), expected.astype(bool))
    assert small.pred_boxes.tensor.tolist() == [[8.0, 20.0, 40.0, 50.0]]

    image = np.full((h, w, 3), 128, np.uint8)
    metadata = Metadata(name="d2ext_test_draw", thing_classes=["a"],
                        stuff_classes=["x", "y", "z"])
    drawn = draw_predictions(image, {"instances": instances}, metadata, max_side=100)
    assert drawn.shape == (60, 100, 3)
    # the mask's tint lands where the resampled mask is; the far corner keeps the image's grey
    assert np.abs(drawn[35, 15].astype(int) - 128).max() > 10
    assert np.abs(drawn[5, 95].astype(int) - 128).max() <= 2
    sem_seg = torch.zeros(3, h, w)
    sem_seg[2][torch.from_numpy(mask)] = 1.0
    labels = downscale_outputs({"sem_seg": sem_seg}, (h, w), (60, 100))["sem_seg_labels"]
    assert np.array_equal(labels.numpy() == 2, expected.astype(bool))
    assert draw_predictions(image, {"sem_seg": sem_seg}, metadata, max_side=100).shape == \
        (60, 100, 3)


def test_lsj_training_mapper_takes_thin_images(tmp_path):
    from PIL import Image

    cfg = setup_cfg(os.path.join(CONFIGS, "quickstart_mask2former.yaml"),
                    ["MODEL.DEVICE", "cpu", "INPUT.MIN_SCALE", "0.1", "INPUT.MAX_SCALE", "0.1"])
    mapper = MaskFormerInstanceDatasetMapper(cfg, is_train=True)
    for h, w in [(1, 4000), (4000, 1)]:
        path = str(tmp_path / f"{h}x{w}.png")
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
        out = mapper({"file_name": path, "height": h, "width": w, "image_id": 1,
                      "annotations": []})
        assert min(out["image"].shape[1:]) >= 1
        assert out["instances"].gt_masks.tensor.shape[1:] == out["image"].shape[1:]
    assert isinstance(mapper.augmentations.augs[1], T.ResizeScale)


@pytest.mark.parametrize("is_train", [True, False])
def test_detectron2_default_mapper_takes_thin_images(is_train, tmp_path):
    from PIL import Image

    from d2ext.data.dataset_mappers import build_default_mapper

    cfg = setup_cfg(os.path.join(CONFIGS, "quickstart.yaml"), ["MODEL.DEVICE", "cpu"])
    mapper = build_default_mapper(cfg, is_train)  # Mask R-CNN's, and every head's evaluation
    for h, w in [(1, 4000), (4000, 1), (1, 1)]:
        path = str(tmp_path / f"{h}x{w}.png")
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
        out = mapper({"file_name": path, "height": h, "width": w, "image_id": 1,
                      "annotations": []})
        assert min(out["image"].shape[1:]) >= 1
