"""DinoMask2Former end to end: configs, shapes, training, checkpoints, mappers."""
import copy
import math
import os

import detectron2  # noqa: F401  (the tests require detectron2)
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from d2ext.data.dataset_mappers import (
    MaskFormerInstanceDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from d2ext.engine import Trainer, setup_cfg

from helpers import CONFIGS

M2F = "quickstart_mask2former.yaml"
# After helpers.tiny_opts: a CPU model of few queries and points at 128 px.
TINY = ["MODEL.DEVICE", "cpu", "INPUT.IMAGE_SIZE", "128", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
        "256", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8"]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting on a shared, loaded CPU (10x slower
    steps observed with 2 threads there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("config, arch", [
    ("dinov3_mask2former.yaml", "dinov3_tiny16"), ("dinov2_mask2former.yaml", "dinov2_tiny14"),
    ("dinov3_mask2former_frozen.yaml", "dinov3_tiny16")])
def test_user_configs_build_and_run_at_non_square_sizes(tiny_config, tmp_path, config, arch):
    # The real configs with a tiny random ViT of the same family (no weights download here).
    cfg = tiny_config(config, *TINY, "MODEL.DINO.ARCH", arch, "MODEL.DINO.WEIGHTS", "",
                      "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", "MODEL.MASK_FORMER.TEST.SEMANTIC_ON",
                      "True", max_iter=2, output_dir=tmp_path)
    model = build_model(cfg).eval()
    if cfg.MODEL.DINO.FREEZE_BLOCKS == -1:
        assert not any(p.requires_grad for p in model.backbone.net.parameters())
        assert all(p.requires_grad for p in model.transformer_decoder.parameters())
    image = torch.randint(0, 255, (3, 70, 100), dtype=torch.uint8)
    images = model.preprocess_image([{"image": image}])
    assert tuple(images.tensor.shape[-2:]) == (96, 128)  # padded to 32, not to a square
    with torch.no_grad():
        mask_features, multi_scale = model.decode_pixels(model.extract_features(images.tensor))
        assert mask_features.shape[-2:] == (24, 32)  # 1/4 of the padded input
        (out,) = model([{"image": image, "height": 140, "width": 200}])
    assert out["instances"].pred_masks.shape[1:] == (140, 200)
    assert out["sem_seg"].shape == (4, 140, 200)


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_checkpoint_round_trips(tiny_config, tmp_path):
    cfg = tiny_config(M2F, *TINY, max_iter=2, output_dir=tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = MaskFormerInstanceDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get("d2ext_synthetic_train")[:2]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(25):
        torch.manual_seed(1)  # the same sampled points each step: compare like with like
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert all(math.isfinite(t) for t in totals)
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:5])

    model.eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m2f")
    fresh = build_model(cfg).eval()
    DetectionCheckpointer(fresh).load(str(tmp_path / "m2f.pth"))
    inputs = [{"image": batch[0]["image"]}]
    with torch.no_grad():
        a, b = model(inputs)[0]["instances"], fresh(inputs)[0]["instances"]
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.pred_masks, b.pred_masks)


@pytest.mark.slow
def test_trainer_runs_the_mask2former_config(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(M2F, *TINY, max_iter=2, output_dir=tmp_path))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(tmp_path / "model_final.pth")


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(rle, counts=rle["counts"].decode())


def test_instance_mapper_drops_crowd_empty_and_degenerate_annotations(tmp_path):
    path = str(tmp_path / "img.png")
    Image.fromarray(np.full((64, 80, 3), 100, np.uint8)).save(path)
    box = np.zeros((64, 80), bool)
    box[10:30, 20:50] = True
    record = {"file_name": path, "height": 64, "width": 80, "image_id": 1, "annotations": [
        {"bbox": [20, 10, 30, 20], "bbox_mode": 1, "category_id": 2, "segmentation": _rle(box)},
        {"bbox": [0, 0, 80, 64], "bbox_mode": 1, "category_id": 1, "iscrowd": 1,
         "segmentation": _rle(~box)},
        {"bbox": [5, 5, 0, 0], "bbox_mode": 1, "category_id": 0,
         "segmentation": _rle(np.zeros((64, 80), bool))},  # degenerate: empty mask and box
        {"bbox": [60, 40, 10, 10], "bbox_mode": 1, "category_id": 3,
         "segmentation": [[60, 40, 70, 40, 70, 50, 60, 50]]},  # polygons work too
    ]}
    mapper = MaskFormerInstanceDatasetMapper(augmentations=[T.ResizeScale(1.0, 1.0, 64, 80)],
                                             image_format="RGB")
    out = mapper(copy.deepcopy(record))
    inst = out["instances"]
    assert out["image"].shape == (3, 64, 80)
    assert inst.gt_classes.tolist() == [2, 3]
    assert inst.gt_masks.tensor[0].sum() == box.sum()
    empty = mapper(dict(copy.deepcopy(record), annotations=[]))["instances"]
    assert len(empty) == 0 and empty.gt_masks.tensor.shape == (0, 64, 80)


def test_lsj_mapper_crops_without_square_padding(tiny_config, tmp_path):
    cfg = tiny_config(M2F, *TINY, "INPUT.MIN_SCALE", "0.3", "INPUT.MAX_SCALE", "0.3",
                      max_iter=2, output_dir=tmp_path)
    record = DatasetCatalog.get("d2ext_synthetic_train")[0]
    out = MaskFormerInstanceDatasetMapper(cfg, is_train=True)(record)
    h, w = out["image"].shape[1:]
    assert max(h, w) <= 0.3 * 128 + 1  # shrunk, not padded back to IMAGE_SIZE
    assert out["instances"].gt_masks.tensor.shape[1:] == (h, w)


def test_semantic_mapper_makes_one_target_per_present_class(tmp_path):
    image, label = str(tmp_path / "img.png"), str(tmp_path / "label.png")
    Image.fromarray(np.full((32, 48, 3), 50, np.uint8)).save(image)
    sem = np.full((32, 48), 255, np.uint8)
    sem[:10] = 0
    sem[20:, 10:30] = 3
    Image.fromarray(sem).save(label)
    mapper = MaskFormerSemanticDatasetMapper(augmentations=[T.ResizeScale(2.0, 2.0, 32, 48)],
                                             image_format="RGB", ignore_label=255)
    out = mapper({"file_name": image, "sem_seg_file_name": label, "height": 32, "width": 48})
    inst = out["instances"]
    assert out["image"].shape == (3, 64, 96) and out["sem_seg"].shape == (64, 96)
    assert inst.gt_classes.tolist() == [0, 3]
    assert inst.gt_masks.tensor[1].sum() == (out["sem_seg"] == 3).sum()
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        mapper({"file_name": image, "height": 32, "width": 48})


@pytest.mark.parametrize("config", ["dinov3_mask2former.yaml", "dinov3_eomt.yaml"])
def test_lsj_mappers_crop_polygon_annotations_like_rle(tmp_path, config):
    # COCO 2017 stores most masks as polygons; detectron2 crops them with shapely. The same
    # object as a polygon and as RLE must give the same training mask after a cropping LSJ.
    cfg = setup_cfg(os.path.join(CONFIGS, config), [
        "MODEL.DEVICE", "cpu", "INPUT.IMAGE_SIZE", "96", "INPUT.MIN_SCALE", "2.0",
        "INPUT.MAX_SCALE", "2.0", "INPUT.RANDOM_FLIP", "none", "OUTPUT_DIR", str(tmp_path)])
    path = str(tmp_path / "img.png")
    Image.fromarray(np.full((96, 96, 3), 80, np.uint8)).save(path)
    polygon = [10.0, 10.0, 90.0, 20.0, 50.0, 90.0]  # crosses every crop of the 192-px image
    rle = mask_util.frPyObjects([polygon], 96, 96)[0]
    rle["counts"] = rle["counts"].decode()
    record = {"file_name": path, "height": 96, "width": 96, "image_id": 1}
    mapper = MaskFormerInstanceDatasetMapper(cfg, is_train=True)
    masks = []
    for segmentation in ([polygon], rle):
        np.random.seed(3)  # the same crop for both
        anno = {"bbox": [10, 10, 80, 80], "bbox_mode": 1, "category_id": 0,
                "segmentation": segmentation}
        out = mapper(dict(copy.deepcopy(record), annotations=[anno]))
        assert out["image"].shape[1:] == (96, 96)
        masks.append(out["instances"].gt_masks.tensor[0])
    inter = (masks[0] & masks[1]).sum().item()
    union = (masks[0] | masks[1]).sum().item()
    assert union > 500 and inter / union > 0.95
