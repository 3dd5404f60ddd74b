"""A user's mistakes end in one line naming the file or key and the fix, exit code 1, in the
tool's own process; --debug shows the traceback instead. Data checks come before any weights."""
import json
import os

import pytest
from PIL import Image

from d2ext.cli import parse_args, run_tool, train_net
from d2ext.data.datasets import DatasetError
from d2ext.errors import UserError
from d2ext.modeling.backbone import dino_vit

from helpers import config_file, tiny_opts


def train(capsys, *argv):
    """train_net's exit code and the lines it printed as its own on stderr (an exception that
    escaped would fail the test: the code returned proves the error was caught)."""
    code = train_net.cli(list(argv))
    err = capsys.readouterr().err.splitlines()
    return code, [line for line in err if line.startswith("train_net:")]


def write_coco(path, images, annotations):
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "a"}]}, f)
    return str(path)


def test_run_tool_prints_one_line_or_the_traceback_with_debug(capsys):
    def main(argv):
        raise UserError("MODEL.X is wrong\nset it right")

    assert run_tool("tool", main, []) == 1
    assert capsys.readouterr().err == "tool: MODEL.X is wrong set it right\n"
    with pytest.raises(UserError):
        run_tool("tool", main, ["--debug"])


def test_options_after_the_overrides_are_options():
    args = parse_args(train_net.argument_parser(),
                      ["--config-file", "c.yaml", "MODEL.WEIGHTS", "w.pth", "--resume",
                       "SOLVER.MAX_ITER", "3", "--num-gpus", "1"])
    assert args.resume and args.num_gpus == 1
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "SOLVER.MAX_ITER", "3"]


def test_dataset_typo_names_the_closest_registered_one(capsys, synthetic_root, tmp_path):
    code, err = train(capsys, "--config-file", config_file("quickstart.yaml"),
                      *tiny_opts(synthetic_root, tmp_path),
                      "DATASETS.TRAIN", "('d2ext_synthetic_trian',)")
    assert code == 1 and len(err) == 1
    assert "DATASETS.TRAIN names 'd2ext_synthetic_trian'" in err[0]
    assert "did you mean 'd2ext_synthetic_train'" in err[0]


def test_missing_coco_is_reported_before_any_weights(capsys, monkeypatch, tmp_path):
    """The published recipe typed as-is on a machine without COCO: the data is named, and no
    weights are fetched (the hub is never asked)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("weights were loaded before the data was checked")

    monkeypatch.setattr(dino_vit, "load_dino_weights", no_download)
    code, err = train(capsys, "--config-file", config_file("dinov3_mask2former.yaml"),
                      "OUTPUT_DIR", str(tmp_path / "out"))
    assert code == 1 and len(err) == 1
    assert "dataset 'coco_2017_train' reads" in err[0] and "instances_train2017.json" in err[0]
    assert "--register-coco" in err[0]


@pytest.mark.parametrize("opts, message", [
    (["SOLVER.MAX_ITER"], "give KEY VALUE pairs"),
    (["SOLVER.MAX_ITR", "3"], "config override SOLVER.MAX_ITR 3: Non-existent key"),
    (["SOLVER.MAX_ITER", "many"], "config override SOLVER.MAX_ITER many: Type mismatch"),
])
def test_bad_overrides_are_one_line(capsys, opts, message):
    code, err = train(capsys, "--config-file", config_file("quickstart.yaml"), *opts)
    assert code == 1 and len(err) == 1 and message in err[0]


def test_missing_config_file(capsys, tmp_path):
    code, err = train(capsys, "--config-file", str(tmp_path / "nope.yaml"))
    assert code == 1 and err == [f"train_net: --config-file {tmp_path / 'nope.yaml'}: no such "
                                 "file; the repository's configs are in configs/."]


def test_coco_json_without_images_and_without_annotations(capsys, synthetic_root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    no_images = write_coco(tmp_path / "none.json", [], [])
    code, err = train(capsys, "--config-file", config_file("quickstart.yaml"),
                      "--register-coco", "mine", no_images, str(images),
                      *tiny_opts(synthetic_root, tmp_path), "DATASETS.TRAIN", "('mine',)")
    assert code == 1 and len(err) == 1 and "none.json: no 'images'" in err[0]
    unlabelled = write_coco(tmp_path / "empty.json",
                            [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}], [])
    code, err = train(capsys, "--config-file", config_file("quickstart.yaml"),
                      "--register-coco", "unlabelled", unlabelled, str(images),
                      *tiny_opts(synthetic_root, tmp_path), "DATASETS.TRAIN", "('unlabelled',)",
                      "MODEL.ROI_HEADS.NUM_CLASSES", "1", "DATASETS.TEST", "()")
    assert code == 1 and len(err) == 1
    assert "DATASETS.TRAIN ['unlabelled']: no image with an annotation" in err[0]


def test_same_register_coco_name_twice(capsys, synthetic_root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    entry = [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}]
    box = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81,
            "iscrowd": 0, "segmentation": [[1, 1, 10, 1, 10, 10]]}]
    first = write_coco(tmp_path / "first.json", entry, box)
    second = write_coco(tmp_path / "second.json", entry, box)
    code, err = train(capsys, "--config-file", config_file("quickstart.yaml"),
                      "--register-coco", f"twice_{tmp_path.name}", first, str(images),
                      "--register-coco", f"twice_{tmp_path.name}", second, str(images),
                      *tiny_opts(synthetic_root, tmp_path))
    assert code == 1 and len(err) == 1 and "choose another name" in err[0]


def test_class_count_below_the_datasets_is_one_line(capsys, synthetic_root, tmp_path):
    code, err = train(capsys, "--config-file", config_file("quickstart.yaml"),
                      *tiny_opts(synthetic_root, tmp_path), "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    assert code == 1 and len(err) == 1
    assert "has 4 classes but MODEL.ROI_HEADS.NUM_CLASSES is 3" in err[0]


def test_an_architecture_larger_than_memory_is_refused_before_allocation(capsys, monkeypatch,
                                                                         synthetic_root,
                                                                         tmp_path):
    monkeypatch.setattr(dino_vit, "available_memory", lambda device: 2 * 2**30)
    code, err = train(capsys, "--config-file", config_file("quickstart.yaml"),
                      *tiny_opts(synthetic_root, tmp_path), "MODEL.DINO.ARCH", "dinov3_vit7b16")
    assert code == 1 and len(err) == 1
    assert err[0].startswith("train_net: MODEL.DINO.ARCH dinov3_vit7b16 needs about 26.9 GB")
    assert "but cpu has 2.1 GB free" in err[0]


def test_every_d2ext_error_is_a_user_error():
    from d2ext.checkpoint import CheckpointError
    from d2ext.curation import CurationError, FiftyOneUnavailable
    from d2ext.export import ExportError
    from d2ext.modeling.backbone import DinoWeightsError
    from d2ext.modeling.converters import EomtConversionError
    from d2ext.modeling.sam_prompt import PrototypeError, SamCheckpointError
    from d2ext.modeling.text_prompt import TextPromptError

    for error in (CheckpointError, CurationError, FiftyOneUnavailable, DatasetError, ExportError,
                  DinoWeightsError, EomtConversionError, PrototypeError, SamCheckpointError,
                  TextPromptError):
        assert issubclass(error, UserError), error


def test_every_tool_takes_debug():
    tools = [name[:-3] for name in os.listdir(os.path.join(os.path.dirname(__file__), "..",
                                                           "tools"))
             if name.endswith(".py") and not name.startswith("_")]
    for name in tools:
        source = open(os.path.join(os.path.dirname(train_net.__file__), f"{name}.py")).read()
        assert '"--debug"' in source and "run_tool(" in source, name
