"""d2ext's configs with detectron2's own entry points, unchanged: get_cfg() +
add_d2ext_config() + merge_from_file, then build_model, DefaultPredictor, DefaultTrainer."""
import glob
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.modeling import build_model

from d2ext import add_d2ext_config
from d2ext.data.datasets import register_synthetic_shapes

from helpers import CONFIGS

# The user configs that build offline with a tiny ViT of their family (no weights download).
NAMES = map(os.path.basename, glob.glob(os.path.join(CONFIGS, "*.yaml")))
BUILDABLE = sorted(n for n in NAMES if "sam" not in n and not n.startswith("Base"))


def plain_cfg(name, extra=()):
    cfg = get_cfg()
    add_d2ext_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    arch = cfg.MODEL.DINO.ARCH
    tiny = ("dinov2_tiny14" if arch.startswith("dinov2") else "dinov3_convnext_test"
            if "convnext" in arch else "dinov3_tiny16")
    cfg.merge_from_list(["MODEL.DINO.ARCH", tiny, "MODEL.DINO.WEIGHTS", "", *extra])
    if cfg.MODEL.META_ARCHITECTURE == "EoMT":
        cfg.merge_from_list(["MODEL.EOMT.NUM_BLOCKS", "2", "MODEL.EOMT.ANNEAL_START_ITERS", "[]",
                             "MODEL.EOMT.ANNEAL_END_ITERS", "[]"])
    return cfg


def test_default_device_is_the_best_real_device():
    cfg = get_cfg()
    add_d2ext_config(cfg)
    torch.device(cfg.MODEL.DEVICE)  # "auto" would raise here
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")


def test_a_saved_cuda_config_runs_where_there_is_no_cuda(caplog):
    import logging

    from d2ext.engine import resolve_device

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    logger = logging.getLogger("d2ext.engine.defaults")
    logger.addHandler(caplog.handler)
    try:
        assert resolve_device("cuda") == resolve_device("auto")
    finally:
        logger.removeHandler(caplog.handler)
    assert "CUDA is not available" in caplog.text


@pytest.mark.parametrize("name", BUILDABLE)
def test_detectron2_build_model_and_default_predictor(name):
    cfg = plain_cfg(name)
    model = build_model(cfg)
    assert next(model.parameters()).device.type == torch.device(cfg.MODEL.DEVICE).type
    predictor = DefaultPredictor(cfg)
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8)
    out = predictor(image)
    assert {"instances", "sem_seg", "panoptic_seg"} & set(out)


@pytest.mark.slow
def test_detectron2_default_trainer_trains_a_d2ext_config(tmp_path):
    register_synthetic_shapes(str(tmp_path / "data"), num_train=4, num_val=2, image_size=96)
    cfg = plain_cfg("quickstart_mask2former.yaml", [
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "INPUT.IMAGE_SIZE", "96",
        "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path)])
    trainer = DefaultTrainer(cfg)
    trainer.train()
    assert trainer.iter == 2 and os.path.isfile(tmp_path / "model_final.pth")
