"""Predictions at scale back in FiftyOne: prelabel --from-predictions, calibrate, export with
calibrated thresholds (verified auto-labelling)."""
import json
import os
import uuid

import numpy as np
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image
from pycocotools.coco import COCO

import d2ext.curation as cur
from d2ext.cli import curate_fiftyone, predict

from helpers import config_file, make_cfg, tiny_opts

pytestmark = pytest.mark.slow  # starts MongoDB (the `fo` fixture of conftest.py)


@pytest.fixture(scope="module")
def predicted(synthetic_root, tmp_path_factory):
    """tools/predict.py run on 4 tiny images with the random tiny EoMT: (images folder,
    predictions.json, tmp folder)."""
    tmp = tmp_path_factory.mktemp("calib")
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (56, 72, 3), dtype=np.uint8)).save(
            images / f"p{i}.png")
    opts = tiny_opts(synthetic_root, tmp / "unused") + ["MODEL.DEVICE", "cpu"]
    cfg = make_cfg("quickstart_eomt", *opts)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp)).save("random")
    assert predict.main(["--config-file", config_file("quickstart_eomt"), "--input", str(images),
                         "--output", str(tmp / "pred"), "--min-score", "0", *opts,
                         "MODEL.WEIGHTS", str(tmp / "random.pth")]) == 0
    return images, tmp / "pred" / "predictions.json", tmp


def _new_dataset(fo, paths, **fields):
    dataset = fo.Dataset(f"d2ext-test-{uuid.uuid4().hex[:8]}")
    dataset.add_samples([fo.Sample(filepath=str(p), **fields) for p in paths])
    return dataset


def test_prelabel_from_predictions_then_export_trains(fo, predicted, capsys):
    images, json_file, tmp = predicted
    dataset = _new_dataset(fo, sorted(images.iterdir()), tags=["train"])
    assert curate_fiftyone.main(["prelabel", "--dataset", dataset.name, "--from-predictions",
                                 str(json_file), "--confidence", "0.0"]) == 0
    assert "Pre-labelled 4 samples" in capsys.readouterr().out
    with open(json_file) as f:
        coco = json.load(f)
    names = [c["name"] for c in coco["categories"]]
    assert dataset.default_classes == names
    assert cur.predictions.field_writer(dataset, "prelabels") == "prelabel"
    assert dataset.count("prelabels.detections") == len(coco["annotations"]) > 0
    scores = sorted(a["score"] for a in coco["annotations"])
    assert sorted(dataset.values("prelabels.detections.confidence", unwind=True)) == \
        pytest.approx(scores)
    out = tmp / "export"
    assert curate_fiftyone.main(["export", "--dataset", dataset.name, "--out", str(out),
                                 "--splits", "train", "--gt-field", "prelabels"]) == 0
    exported = COCO(str(out / "train" / "labels.json"))
    assert len(exported.getImgIds()) == 4 and len(exported.getAnnIds()) > 0
    from d2ext.engine import Trainer, setup_cfg

    cfg = setup_cfg(config_file("quickstart_eomt"), [
        "DATASETS.TRAIN", "('from_predictions',)", "DATASETS.TEST", "()",
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.IMAGE_SIZE", "64"],
        coco_datasets=[("from_predictions", str(out / "train" / "labels.json"),
                        str(out / "train" / "data"))])
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2 and all(len(b["instances"]) > 0 for b in batch)


def test_prelabel_from_predictions_never_replaces_user_labels(fo, predicted, capsys):
    images, json_file, _ = predicted
    dataset = _new_dataset(fo, sorted(images.iterdir()))
    for sample in dataset:
        sample["ground_truth"] = fo.Detections(detections=[fo.Detection(
            label="mine", bounding_box=[0.25, 0.25, 0.5, 0.5], mask=np.ones((28, 36), bool))])
        sample.save()
    argv = ["prelabel", "--dataset", dataset.name, "--from-predictions", str(json_file),
            "--label-field", "ground_truth"]
    assert curate_fiftyone.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ground_truth'" in err[0] and "--overwrite" in err[0]
    assert dataset.distinct("ground_truth.detections.label") == ["mine"]
    assert curate_fiftyone.main(argv + ["--overwrite", "--confidence", "0"]) == 0
    dataset.reload()
    assert "mine" not in dataset.distinct("ground_truth.detections.label")


# The calibration case: every box is a quarter of a 64 x 64 image, its mask filling it; a
# pre-label on the same box matches the reviewed label (mask IoU 1), one on the other box
# matches nothing. Duck pre-labels, highest score first: 0.9 hit, 0.8 hit, 0.6 miss, 0.4 hit,
# 0.2 miss, over 4 reviewed ducks, so precision by threshold is 0.9: 1, 0.8: 1, 0.6: 2/3,
# 0.4: 3/4, 0.2: 3/5 and recall at 0.4 is 3/4. Target 0.75: the lowest threshold reaching it is
# 0.4 (not 0.8: precision dips below and comes back). Panda: one miss, no threshold.
HIT, MISS = [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]
REVIEWED = [("duck", [(0.9, HIT)]), ("duck", [(0.8, HIT)]), ("duck", [(0.6, MISS), (0.4, HIT)]),
            ("duck", [(0.2, MISS)]), ("panda", [(0.7, MISS)])]


def _detection(fo, label, box, confidence=None):
    return fo.Detection(label=label, bounding_box=box, mask=np.ones((32, 32), bool),
                        confidence=confidence)


def test_calibration_picks_the_lowest_threshold_reaching_the_target(fo, tmp_path, capsys):
    samples = []
    for i, (label, preds) in enumerate(REVIEWED + [(None, None)]):
        path = tmp_path / f"s{i}.png"
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(path)
        if label is None:  # unreviewed: pre-labels only
            preds = [("duck", 0.5, HIT), ("duck", 0.3, MISS), ("panda", 0.95, MISS)]
            samples.append(fo.Sample(filepath=str(path), tags=["train"], prelabels=fo.Detections(
                detections=[_detection(fo, lb, box, c) for lb, c, box in preds])))
            continue
        samples.append(fo.Sample(
            filepath=str(path), tags=["train", "reviewed"],
            ground_truth=fo.Detections(detections=[_detection(fo, label, HIT)]),
            prelabels=fo.Detections(detections=[_detection(fo, label, box, c)
                                                for c, box in preds])))
    dataset = fo.Dataset(f"d2ext-test-{uuid.uuid4().hex[:8]}")
    dataset.add_samples(samples)
    dataset.default_classes = ["duck", "panda"]
    dataset.save()
    out = tmp_path / "thresholds.json"
    assert curate_fiftyone.main(["calibrate", "--dataset", dataset.name, "--pred-field",
                                 "prelabels", "--gt-field", "ground_truth",
                                 "--target-precision", "0.75", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "threshold 0.4000" in printed and "no threshold reaches it" in printed
    with open(out) as f:
        calibration = json.load(f)
    assert calibration["thresholds"] == {"duck": 0.4, "panda": None}
    duck = calibration["classes"]["duck"]
    assert duck["precision"] == pytest.approx(0.75) and duck["recall"] == pytest.approx(0.75)
    assert [round(p, 4) for _, p, _ in duck["curve"]] == [1.0, 1.0, 0.6667, 0.75, 0.6]
    assert 0 < duck["AP"] <= 1 and calibration["classes"]["panda"]["AP"] == 0
    assert os.path.getsize(tmp_path / "thresholds_pr.png") > 0
    # target 0.9: only thresholds 0.9 and 0.8 reach it; the lowest is 0.8
    assert curate_fiftyone.main(["calibrate", "--dataset", dataset.name, "--gt-field",
                                 "ground_truth", "--out", str(tmp_path / "t90.json")]) == 0
    assert cur.load_thresholds(str(tmp_path / "t90.json"))["thresholds"]["duck"] == 0.8

    # export: reviewed samples -> their reviewed labels; the rest -> pre-labels kept by the
    # thresholds (duck 0.5 kept, duck 0.3 and the uncalibrated panda left out)
    export = tmp_path / "export"
    assert curate_fiftyone.main(["export", "--dataset", dataset.name, "--out", str(export),
                                 "--splits", "train", "--gt-field", "prelabels",
                                 "--thresholds", str(out)]) == 0
    coco = COCO(str(export / "train" / "labels.json"))
    per_image = {coco.imgs[i]["file_name"]: sorted(
        coco.cats[a["category_id"]]["name"] for a in coco.imgToAnns[i]) for i in coco.imgs}
    assert per_image == {"s0.png": ["duck"], "s1.png": ["duck"], "s2.png": ["duck"],
                         "s3.png": ["duck"], "s4.png": ["panda"], "s5.png": ["duck"]}
    # thresholds calibrated on another field are refused by name
    assert curate_fiftyone.main(["export", "--dataset", dataset.name, "--out",
                                 str(tmp_path / "x"), "--splits", "train", "--gt-field",
                                 "ground_truth", "--thresholds", str(out)]) == 2
    assert "--gt-field prelabels" in capsys.readouterr().err
