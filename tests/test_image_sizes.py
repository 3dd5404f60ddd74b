"""Every head's predictor takes images of any size, thin and tiny ones included, and returns
outputs at the image's size; the training mappers take them too."""
import os

import numpy as np
import pytest
from detectron2.data import transforms as T

from d2ext.data.dataset_mappers import MaskFormerInstanceDatasetMapper
from d2ext.engine import load_predictor, setup_cfg

from conftest import CONFIGS

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
