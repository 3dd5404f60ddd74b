import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from d2ext.data.datasets import DatasetError, register_coco_dataset
from d2ext.data.datasets.synthetic_shapes import SYNTHETIC_CLASSES, ensure_synthetic_split
from d2ext.data.image_io import ImageReadError, read_image_any


def test_synthetic_split_is_deterministic_and_cached(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ensure_synthetic_split(a, 5, 96, seed=3)
    ensure_synthetic_split(b, 5, 96, seed=3)
    with open(os.path.join(a, "annotations.json")) as f:
        data = json.load(f)
    with open(os.path.join(b, "annotations.json")) as f:
        assert json.load(f) == data
    assert [c["name"] for c in data["categories"]] == SYNTHETIC_CLASSES
    assert data["annotations"] and all(ann["area"] >= 20 for ann in data["annotations"])
    stamp = os.path.getmtime(os.path.join(a, "annotations.json"))
    ensure_synthetic_split(a, 5, 96, seed=3)  # cached: not rewritten
    assert os.path.getmtime(os.path.join(a, "annotations.json")) == stamp
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_synthetic_dataset_registered_from_cfg(tiny_cfg):
    dicts = DatasetCatalog.get("d2ext_synthetic_val")
    assert len(dicts) == 6 and all(os.path.isfile(d["file_name"]) for d in dicts)
    assert dicts[0]["height"] == 128
    assert MetadataCatalog.get("d2ext_synthetic_val").thing_classes == SYNTHETIC_CLASSES


def _coco(tmp_path, categories, file_names):
    images = [dict(id=i + 1, file_name=n, height=8, width=8) for i, n in enumerate(file_names)]
    anns = [dict(id=i + 1, image_id=i + 1, category_id=categories[0]["id"], bbox=[1, 1, 4, 4],
                 area=16, iscrowd=0, segmentation=[[1, 1, 5, 1, 5, 5, 1, 5]])
            for i in range(len(images))]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=categories)))
    return str(path)


def test_coco_dataset_registration_and_mistakes(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    good = _coco(tmp_path, [dict(id=7, name="duck")], ["a.png", "gone.png"])
    register_coco_dataset("t_good", good, str(root))
    dicts = DatasetCatalog.get("t_good")  # the missing image is skipped (and logged), not fatal
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.png"]
    assert MetadataCatalog.get("t_good").thing_classes == ["duck"]

    with pytest.raises(DatasetError, match="nope.json does not exist"):
        register_coco_dataset("t_nojson", str(tmp_path / "nope.json"), str(root))
    with pytest.raises(DatasetError, match="not a directory"):
        register_coco_dataset("t_noroot", good, str(tmp_path / "no_images"))
    empty = tmp_path / "empty"
    empty.mkdir()
    register_coco_dataset("t_empty_root", good, str(empty))
    with pytest.raises(DatasetError, match=f"none of the 2 images .* under the image root {empty}"):
        DatasetCatalog.get("t_empty_root")
    unnamed = _coco(tmp_path, [dict(id=3)], ["a.png"])
    register_coco_dataset("t_unnamed", unnamed, str(root))
    with pytest.raises(DatasetError, match=r"ids \[3\] have no 'name'"):
        DatasetCatalog.get("t_unnamed")


def test_read_image_handles_what_users_throw_at_it(tmp_path):
    gray = np.full((4, 6), 100, np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert read_image_any(str(tmp_path / "gray.png")).shape == (4, 6, 3)

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent on the left half
    rgba[:, 3:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = read_image_any(str(tmp_path / "rgba.png"), format="RGB")
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 5].tolist() == [255, 0, 0]

    deep = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2800)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grayscale
    out = read_image_any(str(tmp_path / "deep.png"))
    assert out[..., 0].max() > 200 and out[0, 0, 0] == 0  # scaled, not clipped to 255

    exif_image = Image.new("RGB", (6, 4))
    exif = exif_image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    exif_image.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image_any(str(tmp_path / "rot.jpg")).shape == (6, 4, 3)

    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.txt"):
        read_image_any(str(tmp_path / "notes.txt"))


def test_annotations_without_masks_are_skipped_and_counted(tmp_path, caplog):
    import logging

    from d2ext.data.datasets import load_coco_instances

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    square = [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64,
             "iscrowd": 0, "segmentation": square},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64,
             "iscrowd": 0, "segmentation": []},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64,
             "iscrowd": 0}]
    (tmp_path / "a.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
        "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    logger = logging.getLogger("d2ext")
    logger.addHandler(caplog.handler)
    try:
        (record,) = load_coco_instances("masks_test", str(tmp_path / "a.json"), str(tmp_path))
    finally:
        logger.removeHandler(caplog.handler)
    assert [a["segmentation"] for a in record["annotations"]] == [square]
    assert "skipping 2 annotations" in caplog.text and "a.json" in caplog.text


def test_training_skips_an_unreadable_image_with_a_count(tmp_path):
    from d2ext.data.dataset_mappers import SkipUnreadableImages

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    calls = []

    def mapper(d):
        calls.append(d["file_name"])
        with open(d["file_name"], "rb") as f:
            Image.open(f).load()
        return d

    skip = SkipUnreadableImages(mapper)
    assert skip({"file_name": str(tmp_path / "broken.png")}) is None
    assert skip({"file_name": str(tmp_path / "missing.png")}) is None
    assert skip.skipped == 2 and len(calls) == 2
