import os
import shutil

import pytest
import torch
from detectron2.data import DatasetCatalog

from helpers import run_tool, tiny_opts


@pytest.fixture
def image_dir(tiny_cfg, tmp_path):
    """Two good images (one in a subfolder), a truncated PNG and a text file."""
    records = DatasetCatalog.get("d2ext_synthetic_val")[:2]
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(records[0]["file_name"], folder / "a.png")
    shutil.copy(records[1]["file_name"], folder / "sub" / "b.png")
    with open(records[0]["file_name"], "rb") as f:
        (folder / "sub" / "broken.png").write_bytes(f.read()[:300])
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.slow
def test_demo_over_a_directory_skips_and_reports_bad_files(synthetic_root, image_dir, tmp_path):
    out = tmp_path / "drawn"
    result = run_tool("tools/demo.py", "--config-file", "configs/quickstart.yaml",
                      "--input", str(image_dir), "--output", str(out), "--opts",
                      *tiny_opts(synthetic_root, tmp_path / "unused"))
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-2000:]  # some inputs failed
    assert "broken.png" in log and "notes.txt" in log
    assert "is_fx_tracing" not in log  # a known dependency warning, silenced by the tools
    assert "2 of 4 images done, 2 failed" in log
    summary = log[log.index("2 of 4 images done"):]
    assert "broken.png" in summary and "notes.txt" in summary  # every failed file named
    # The input tree is mirrored under --output, each drawing named after its whole input name.
    assert sorted(os.listdir(out)) == ["a.png.png", "sub"]
    assert os.listdir(out / "sub") == ["b.png.png"]
    assert (out / "a.png.png").stat().st_size > 0 and (out / "sub" / "b.png.png").stat().st_size


def test_output_paths_never_collide_or_replace_an_input(tmp_path):
    from d2ext.cli.demo import output_paths

    for name in ("a/x.jpg", "a/x.png", "b/x.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = [str(tmp_path / n) for n in ("a/x.jpg", "a/x.png", "b/x.jpg")]
    targets = output_paths(str(tmp_path / "out"), files)
    assert len(set(targets.values())) == 3
    assert targets[files[0]] == str(tmp_path / "out" / "a" / "x.jpg.png")
    # --output the input folder: drawings go beside the inputs, never over them ...
    beside = output_paths(str(tmp_path / "a"), [str(tmp_path / "a" / "x.jpg")])
    assert beside[str(tmp_path / "a" / "x.jpg")] == str(tmp_path / "a" / "x.jpg.png")
    # ... and an output file that is the input itself is refused (None: reported, skipped).
    assert output_paths(files[1], [files[1]]) == {files[1]: None}


@pytest.mark.slow
def test_demo_single_file_to_file_succeeds(synthetic_root, image_dir, tmp_path):
    target = tmp_path / "result.jpg"
    result = run_tool("tools/demo.py", "--config-file", "configs/quickstart.yaml",
                      "--input", str(image_dir / "a.png"), "--output", str(target),
                      "--confidence-threshold", "0.3", "--opts",
                      *tiny_opts(synthetic_root, tmp_path / "unused"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert target.stat().st_size > 0


def test_a_failing_prediction_is_named_and_the_run_goes_on(image_dir, tmp_path, caplog):
    import argparse

    import numpy as np
    from detectron2.data.catalog import Metadata

    from d2ext.cli.demo import run_images

    def predictor(image):
        if image.shape[0] == 7:
            raise RuntimeError("Output size is too small\nmore detail")
        return {"sem_seg": torch.zeros(2, *image.shape[:2])}

    from PIL import Image
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "thin.png")
    files = [str(tmp_path / "thin.png"), str(image_dir / "a.png")]
    args = argparse.Namespace(output=str(tmp_path / "out"), confidence_threshold=0.5,
                              debug=False)
    with caplog.at_level("ERROR", logger="d2ext"):
        failed = run_images(predictor, Metadata(name="t", stuff_classes=["a", "b"]), files, args)
    assert failed == [files[0]]
    assert "thin.png: RuntimeError: Output size is too small" in caplog.text
    assert "more detail" not in caplog.text  # one line per failure
    assert os.path.isfile(tmp_path / "out" / "inputs" / "a.png.png")  # the next one was drawn


def test_demo_without_a_config_uses_the_quickstart_and_says_when_untrained(tmp_path,
                                                                           monkeypatch):
    from d2ext.cli import demo

    def trained(root):
        (root / "output" / "quickstart").mkdir(parents=True)
        (root / "output" / "quickstart" / "model_final.pth").write_bytes(b"")
        return ["MODEL.WEIGHTS", str(root / "output" / "quickstart" / "model_final.pth")]

    work, repo = tmp_path / "work", tmp_path / "repo"
    work.mkdir()
    repo.mkdir()
    monkeypatch.chdir(work)  # run from another directory: the default still resolves
    monkeypatch.setattr(demo, "_REPO", str(repo))  # a repository without a trained quickstart
    assert os.path.isfile(demo.QUICKSTART_CONFIG)
    assert demo.quickstart_weights() == []  # untrained: neither here nor in the repository
    in_repo = trained(repo)
    assert demo.quickstart_weights() == in_repo  # the repository's, from another directory
    here = trained(work)
    assert demo.quickstart_weights() == here  # the working directory's comes first


def test_an_unmatched_glob_is_kept_to_be_reported(tmp_path):
    from d2ext.cli.demo import expand_inputs

    (tmp_path / "a.png").write_bytes(b"")
    pattern = str(tmp_path / "*.jpeg")
    assert expand_inputs([str(tmp_path / "a.png"), pattern]) == [str(tmp_path / "a.png"), pattern]


def test_curation_switches_after_the_overrides_are_taken_back():
    from d2ext.cli import curate_fiftyone, parse_args

    parser = curate_fiftyone.argument_parser()
    args = parse_args(parser, ["predict", "--dataset", "d", "--config-file", "c.yaml",
                               "MODEL.WEIGHTS", "w.pth", "--no-app"])
    assert args.no_app is True and args.opts == ["MODEL.WEIGHTS", "w.pth"]


def test_an_unwritable_output_is_one_error_before_loading(tmp_path, caplog):
    import logging

    from d2ext.cli import demo

    if os.geteuid() == 0:  # root may write anywhere: a path under a file is refused for all
        (tmp_path / "file").write_text("")
        output = str(tmp_path / "file" / "out")
    else:
        os.chmod(tmp_path, 0o500)
        output = str(tmp_path / "out")
    log = logging.getLogger("d2ext.demo")
    log.addHandler(caplog.handler)
    try:
        assert demo.main(["--input", "x.png", "--output", output]) == 2
    finally:
        log.removeHandler(caplog.handler)
        os.chmod(tmp_path, 0o700)
    assert f"--output {output}: cannot create" in caplog.text
