import os
import shutil

import pytest
from detectron2.data import DatasetCatalog

from conftest import run_tool, tiny_opts


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
    assert "2 of 4 images done, 2 failed" in log
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]
    assert all(os.path.getsize(out / n) > 0 for n in os.listdir(out))


@pytest.mark.slow
def test_demo_single_file_to_file_succeeds(synthetic_root, image_dir, tmp_path):
    target = tmp_path / "result.jpg"
    result = run_tool("tools/demo.py", "--config-file", "configs/quickstart.yaml",
                      "--input", str(image_dir / "a.png"), "--output", str(target),
                      "--confidence-threshold", "0.3", "--opts",
                      *tiny_opts(synthetic_root, tmp_path / "unused"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert target.stat().st_size > 0
