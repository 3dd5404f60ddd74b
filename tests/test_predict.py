"""tools/predict.py: batch prediction into a COCO json, split across processes, resumable."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from d2ext.cli import predict
from d2ext.engine.batch_predict import SHARD_DIR, read_shards, repair_shards

from helpers import REPO, config_file, make_cfg, tiny_opts


def _write_images(folder, count, seed=0):
    """``count`` small random RGB images of varied sizes, some in a sub-folder."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "sub", exist_ok=True)
    for i in range(count):
        sub = "sub/" if i % 3 == 0 else ""
        image = rng.integers(0, 255, (48 + 5 * (i % 4), 64 + 3 * (i % 5), 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{sub}img{i:03d}.png")


@pytest.fixture(scope="module")
def run_setup(synthetic_root, tmp_path_factory):
    """(options, overrides) of a predict run on the tiny EoMT with saved random weights."""
    tmp = tmp_path_factory.mktemp("predict")
    opts = tiny_opts(synthetic_root, tmp / "unused") + ["MODEL.DEVICE", "cpu"]
    cfg = make_cfg("quickstart_eomt", *opts)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp)).save("random")
    options = ["--config-file", config_file("quickstart_eomt"), "--min-score", "0.0"]
    return options, opts + ["MODEL.WEIGHTS", str(tmp / "random.pth")]


def _predict(run_setup, *options, overrides=()):
    head, opts = run_setup
    return predict.main(head + list(options) + opts + list(overrides))


def _by_name(out):
    with open(os.path.join(out, "predictions.json")) as f:
        coco = json.load(f)
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    found = {}
    for ann in coco["annotations"]:
        found.setdefault(names[ann["image_id"]], []).append(ann)
    return coco, found


@pytest.mark.slow  # two gloo processes
def test_two_processes_give_the_one_process_predictions(run_setup, tmp_path):
    _write_images(tmp_path / "images", 5)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", one) == 0
    # and read by a DataLoader worker each (the one-process run reads in its own process)
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", two,
                    "--num-gpus", "2", "--dist-url", "auto", "--num-workers", "1") == 0
    assert len(os.listdir(os.path.join(two, SHARD_DIR))) == 2
    coco1, found1 = _by_name(one)
    coco2, found2 = _by_name(two)
    assert coco1["images"] == coco2["images"] and len(coco1["images"]) == 5
    assert coco1["categories"] == coco2["categories"]
    assert [c["name"] for c in coco1["categories"]] == ["circle", "square", "triangle", "star"]
    assert set(found1) == set(found2)
    for name, anns in found1.items():
        other = found2[name]
        assert len(anns) == len(other) > 0
        for a, b in zip(anns, other):
            assert a["category_id"] == b["category_id"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert (mask_util.decode(a["segmentation"]) == mask_util.decode(b["segmentation"])
                    ).all()


@pytest.mark.slow  # runs the tool in a subprocess and kills it
def test_a_run_killed_with_sigkill_resumes_and_writes_each_image_once(run_setup, tmp_path):
    count = 20
    _write_images(tmp_path / "images", count)
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--input",
               str(tmp_path / "images"), "--output", str(out), *run_setup[0], *run_setup[1]]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    shard = out / SHARD_DIR / "part-00000.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if shard.is_file() and shard.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "predictions.json").exists(), "the run ended before it was killed"
    finished = shard.read_bytes().count(b"\n")
    assert 1 <= finished < count
    with open(shard, "a") as f:  # a line cut short by the kill
        f.write('{"file_name": "img000.png", "height": 1, "width"')
    assert len(read_shards(str(out))[0]) == finished  # the cut line is not read
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", str(out)) == 0
    coco, _ = _by_name(out)
    names = [image["file_name"] for image in coco["images"]]
    assert len(names) == len(set(names)) == count
    assert len({image["id"] for image in coco["images"]}) == count
    # finished images were not predicted again: one complete line per image in the shards
    assert sum(p.read_bytes().count(b"\n") for p in (out / SHARD_DIR).iterdir()) == count


def test_a_changed_config_or_input_list_is_refused_by_name(run_setup, tmp_path, capsys):
    _write_images(tmp_path / "images", 2)
    out = str(tmp_path / "out")
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", out) == 0
    capsys.readouterr()
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", out,
                    overrides=["TEST.DETECTIONS_PER_IMAGE", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the config differs" in err[0] and "--restart" in err[0]
    _write_images(tmp_path / "images", 3)
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", out) == 1
    assert "the input list differs" in capsys.readouterr().err
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", out,
                    "--restart") == 0
    assert len(_by_name(out)[0]["images"]) == 3
    # a folder this tool did not write is never written into
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", str(foreign),
                    "--restart") == 1
    assert "no run.json of this tool" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == ["notes.txt"]


def test_a_failing_image_is_named_counted_and_the_rest_predicted(run_setup, tmp_path, capsys):
    _write_images(tmp_path / "images", 3)
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    out = str(tmp_path / "out")
    assert _predict(run_setup, "--input", str(tmp_path / "images") + "/**/*.png", "--output", out,
                    "--batch-size", "2", "--num-workers", "1") == 1
    printed = capsys.readouterr().out
    assert "1 image(s) failed" in printed and "broken.png" in printed
    coco, _ = _by_name(out)
    assert sorted(i["file_name"] for i in coco["images"]) == [
        "img001.png", "img002.png", "sub/img000.png"]


def test_an_image_the_model_fails_on_is_isolated_from_its_batch(run_setup, tmp_path, capsys,
                                                                monkeypatch):
    from d2ext.engine import batch_predict

    _write_images(tmp_path / "images", 4)  # heights 48, 53, 58, 63

    def load_predictor(cfg):
        predictor = real(cfg)
        model = predictor.model

        def fails_on_height_53(inputs):
            if any(x["height"] == 53 for x in inputs):
                raise RuntimeError("out of memory (a stand-in)")
            return model(inputs)

        predictor.model = fails_on_height_53
        return predictor

    real = batch_predict.load_predictor
    monkeypatch.setattr(batch_predict, "load_predictor", load_predictor)
    out = str(tmp_path / "out")
    assert _predict(run_setup, "--input", str(tmp_path / "images"), "--output", out,
                    "--batch-size", "4") == 1
    printed = capsys.readouterr().out
    assert "1 image(s) failed" in printed and "img001.png: RuntimeError: out of memory" in printed
    assert sorted(i["file_name"] for i in _by_name(out)[0]["images"]) == [
        "img002.png", "sub/img000.png", "sub/img003.png"]


def test_a_semantic_only_config_is_refused_in_one_line(tmp_path, capsys):
    _write_images(tmp_path / "images", 1)
    assert predict.main(["--config-file", config_file("quickstart_semseg"), "--input",
                         str(tmp_path / "images"), "--output", str(tmp_path / "out"),
                         "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not instances" in err[0]


def test_an_unfinished_last_line_is_cut_before_appending(tmp_path):
    shards = tmp_path / SHARD_DIR
    shards.mkdir()
    done = {"file_name": "a.png", "height": 2, "width": 2, "instances": []}
    (shards / "part-00000.jsonl").write_text(json.dumps(done) + "\n" + '{"file_name": "b.p')
    assert list(read_shards(str(tmp_path))[0]) == ["a.png"]
    repair_shards(str(tmp_path))
    assert (shards / "part-00000.jsonl").read_text() == json.dumps(done) + "\n"


def test_inputs_from_a_folder_a_glob_a_list_or_a_coco_json(tmp_path):
    from d2ext.engine.batch_predict import list_inputs

    _write_images(tmp_path / "images", 3)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    root = str(tmp_path / "images")
    expected = (root, ["img001.png", "img002.png", "sub/img000.png"])
    assert list_inputs(root) == expected
    assert list_inputs(root + "/**/*") == expected
    listed = tmp_path / "list.txt"
    listed.write_text("images/sub/img000.png\n\n" + root + "/img001.png\n")
    assert list_inputs(str(listed)) == (root, ["img001.png", "sub/img000.png"])
    coco = tmp_path / "images" / "labels.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "img002.png"}]}))
    assert list_inputs(str(coco)) == (root, ["img002.png"])
