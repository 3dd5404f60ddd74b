"""Semantic segmentation on DINO features: head, SemanticSegmentor, folder datasets, training."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import SemanticSegmentor, build_model
from PIL import Image

from d2ext.data.datasets import DatasetError
from d2ext.modeling import DinoLinearSemSegHead
from d2ext.modeling.dino_linear_sem_seg_head import upsample_bilinear

from helpers import config_file, is_score, tiny_semseg_config, tiny_semseg_opts


def test_head_upsamples_to_input_and_ignores_ignore_value():
    head = DinoLinearSemSegHead({"vit": ShapeSpec(channels=8, stride=16)}, in_feature="vit",
                                num_classes=3, ignore_value=255)
    features = {"vit": torch.randn(2, 8, 3, 4)}
    head.eval()
    logits, _ = head(features)
    assert logits.shape == (2, 3, 48, 64)
    expected = torch.nn.functional.interpolate(head.layers(features), scale_factor=16,
                                               mode="bilinear", align_corners=False)
    assert torch.allclose(logits, expected, atol=1e-5)  # the matmul upsampling is bilinear
    head.train()
    targets = torch.full((2, 48, 64), 255)
    _, losses = head(features, targets)
    assert losses["loss_sem_seg"].item() == 0.0  # all ignored: no signal, no NaN
    targets[:, :10] = 1
    _, losses = head(features, targets)
    assert torch.isfinite(losses["loss_sem_seg"]) and losses["loss_sem_seg"] > 0
    targets[0, 0, 0] = 7  # neither a class nor the ignore value: a clear error
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        head(features, targets)


def test_semantic_segmentor_pads_and_returns_image_size(tmp_path):
    cfg = tiny_semseg_config(tmp_path / "data")
    assert cfg.MODEL.DINO.FREEZE_BLOCKS == -1 and len(cfg.MODEL.DINO.OUT_BLOCKS) == 4
    model = build_model(cfg).eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("sem_seg_head.") for n in trainable)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)  # not a multiple of 16
    with torch.no_grad():
        out = model([{"image": image, "height": 100, "width": 140}])[0]["sem_seg"]
    assert out.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 100, 140)


@pytest.mark.parametrize("size_in,size_out", [(4, 64), (5, 80), (7, 50), (50, 100), (80, 37)])
def test_bilinear_matrix_equals_interpolate(size_in, size_out):
    x = torch.randn(2, 3, size_in, size_in + 1, dtype=torch.float64)
    expected = F.interpolate(x, size=(size_out, size_out + 3), mode="bilinear",
                             align_corners=False)
    got = upsample_bilinear(x, (size_out, size_out + 3))
    assert torch.allclose(got, expected, atol=1e-10)


def test_dino_semantic_segmentor_equals_semantic_segmentor(tmp_path):
    """The one-pass resampling gives detectron2's SemanticSegmentor output: padding cropped,
    resized to the requested height and width (here neither a multiple of 16 nor the input)."""
    cfg = tiny_semseg_config(tmp_path / "data")
    model = build_model(cfg).eval()
    assert type(model).__name__ == "DinoSemanticSegmentor"
    with torch.no_grad():
        model.sem_seg_head.classifier.weight.normal_()  # not the near-zero initial logits
        for height, width, out in [(50, 70, (100, 140)), (64, 48, (64, 48)), (90, 40, (33, 61))]:
            image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
            batch = [{"image": image, "height": out[0], "width": out[1]}]
            got = model(batch)[0]["sem_seg"]
            expected = SemanticSegmentor.forward(model, batch)[0]["sem_seg"]
            assert got.shape == expected.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, *out)
            assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max())


def _write_pairs(root, image_names, mask_names):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in image_names:
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "images" / name)
    for name in mask_names:
        Image.fromarray(np.ones((32, 48), np.uint8)).save(root / "masks" / name)
    return str(root / "images"), str(root / "masks")


def test_folder_dataset_pairs_images_and_masks(tmp_path):
    images, masks = _write_pairs(tmp_path, ["a.jpg", "b.png"], ["a.png", "b.png"])
    name = f"pairs_{tmp_path.name}"
    tiny_semseg_config(tmp_path / "data", "DATASETS.SEM_SEG_CLASSES",
                       "['bg', 'x', 'y', 'z', 'w']", sem_seg_datasets=[(name, images, masks)])
    dicts = DatasetCatalog.get(name)
    assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == ["a.png", "b.png"]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "sem_seg" and meta.stuff_classes[1] == "x"
    assert meta.ignore_label == 255


def test_wrong_mask_folder_names_the_unpaired_files(tmp_path):
    images, masks = _write_pairs(tmp_path, ["street_01.jpg", "street_02.jpg"],
                                 ["street_01.png", "beach_07.png"])
    name = f"wrong_{tmp_path.name}"
    tiny_semseg_config(tmp_path / "data", sem_seg_datasets=[(name, images, masks)])
    with pytest.raises(DatasetError) as err:
        DatasetCatalog.get(name)
    assert "street_02.jpg" in str(err.value) and "beach_07.png" in str(err.value)
    assert "street_01" not in str(err.value)
    missing = f"missing_{tmp_path.name}"
    tiny_semseg_config(tmp_path / "data",
                       sem_seg_datasets=[(missing, images, str(tmp_path / "nope"))])
    with pytest.raises(DatasetError, match="nope"):
        DatasetCatalog.get(missing)


def test_class_count_mismatch_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="NUM_CLASSES"):
        tiny_semseg_config(tmp_path / "data", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3")


@pytest.mark.slow
def test_training_lowers_loss_and_reports_miou(tmp_path, load_tool):
    """tools/train_net.py on the synthetic semantic dataset: falling loss, SemSegEvaluator's
    mIoU in metrics.json, and the training curves plotted afterwards."""
    train_net = load_tool("train_net")
    out = tmp_path / "out"
    args = train_net.argument_parser().parse_args(
        ["--config-file", config_file("quickstart_semseg.yaml"),
         *tiny_semseg_opts(tmp_path / "data"),
         "SOLVER.MAX_ITER", "40", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "0",
         "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "40",
         "D2EXT.SAVE_DEMO_IMAGE", "False", "OUTPUT_DIR", str(out)])
    train_net.main(args)
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses) >= 2 and losses[-1] < 0.9 * losses[0]
    (evaluation,) = [r for r in records if "sem_seg/mIoU" in r]
    per_class = [v for k, v in evaluation.items() if k.startswith("sem_seg/IoU-")]
    # SemSegEvaluator's mIoU is the mean over the dataset's 5 classes, and 40 iterations learn
    # at least the dominant background class.
    assert len(per_class) == 5 and all(is_score(v) for v in per_class)
    assert is_score(evaluation["sem_seg/mIoU"])
    assert evaluation["sem_seg/mIoU"] == pytest.approx(sum(per_class) / 5, abs=1e-3)
    assert evaluation["sem_seg/IoU-background"] > 80
    assert sorted(os.listdir(out / "plots")) == ["losses.png", "miou.png", "pixel_accuracy.png"]


def test_palette_masks_are_refused_with_the_fix(tmp_path):
    images, masks = _write_pairs(tmp_path, ["a.png"], [])
    Image.fromarray(np.ones((32, 48), np.uint8)).convert("P").save(os.path.join(masks, "a.png"))
    name = f"palette_{tmp_path.name}"
    tiny_semseg_config(tmp_path / "data", sem_seg_datasets=[(name, images, masks)])
    with pytest.raises(DatasetError, match=r"a\.png has mode 'P'"):
        DatasetCatalog.get(name)


def test_one_pass_resampling_equals_two_passes_at_ade20k_shape():
    """At ADE20K's shape (150 classes; a 490 x 640 input padded to 496 x 640, logits at stride
    16, shown at 375 x 500), the upsampling, crop and resize folded into two matrices equal
    detectron2's F.interpolate + sem_seg_postprocess."""
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    from d2ext.modeling.meta_arch.dino_semantic_segmentor import resample_logits

    logits = torch.randn(150, 31, 40)  # a 490 x 640 input padded to 496 x 640
    image_size, out_size = (490, 640), (375, 500)
    got = resample_logits(logits, 16, image_size, out_size)
    up = F.interpolate(logits[None], size=(496, 640), mode="bilinear", align_corners=False)[0]
    expected = sem_seg_postprocess(up, image_size, *out_size)
    assert got.shape == expected.shape == (150, *out_size)
    assert (got - expected).abs().max() < 1e-4
