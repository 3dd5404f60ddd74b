"""One image reader everywhere: training, evaluation, demo/predict and SAM prototype references
see the same pixels (16-bit, EXIF, transparency, palette, animations), labels are never
rescaled, and COCO jsons with repeated image or annotation ids are refused by name."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from d2ext.data.dataset_mappers import (
    MaskFormerInstanceDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_default_mapper,
)
from d2ext.data.datasets import DatasetError, load_coco_instances
from d2ext.data.datasets.coco_instances import has_mask
from d2ext.data.image_io import read_image_any
from d2ext.engine import setup_cfg
from d2ext.modeling.sam_prompt.prototypes import Reference

from helpers import CONFIGS, tiny_opts

H, W = 24, 32  # every mapper below is configured to keep this size: pixels compare one to one


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """The Mask2Former quickstart with augmentations that leave an H x W image as it is."""
    root = tmp_path_factory.mktemp("image_reading")
    return setup_cfg(os.path.join(CONFIGS, "quickstart_mask2former.yaml"),
                     tiny_opts(str(root / "datasets"), root / "out") + [
                         "MODEL.DEVICE", "cpu", "INPUT.RANDOM_FLIP", "none",
                         "INPUT.IMAGE_SIZE", str(W), "INPUT.MIN_SCALE", "1.0",
                         "INPUT.MAX_SCALE", "1.0", "INPUT.MIN_SIZE_TRAIN", f"({H},)",
                         "INPUT.MAX_SIZE_TRAIN", str(W), "INPUT.MIN_SIZE_TEST", str(H),
                         "INPUT.MAX_SIZE_TEST", str(W)])


def _gradient16():
    return np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)


def _write(kind, path):
    """An H x W (as displayed) image of ``kind`` at ``path``."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if kind == "16bit":
        Image.fromarray(_gradient16()).save(path)
    elif kind == "rgba":  # transparent left half hides saturated red
        rgba = np.dstack([rgb, np.zeros((H, W), np.uint8)])
        rgba[:, : W // 2, :3] = (255, 0, 0)
        rgba[:, W // 2:, 3] = 255
        Image.fromarray(rgba, "RGBA").save(path)
    elif kind == "palette":  # palette index 0 is transparent
        palette = Image.fromarray(rgb).quantize(8)
        palette.save(path, transparency=0)
    elif kind == "la":
        gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
        alpha = np.where(np.arange(W) < W // 3, 0, 255).astype(np.uint8)[None].repeat(H, 0)
        Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)
    elif kind == "gray":
        Image.fromarray(rgb[..., 0]).save(path)
    elif kind == "exif":  # stored W x H on its side; orientation 6 shows it H x W
        stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))
        exif = stored.getexif()
        exif[0x0112] = 6
        stored.save(path, exif=exif)
    elif kind == "animated":
        frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return path


KINDS = ["16bit", "rgba", "palette", "la", "gray", "exif", "animated"]


def _pixels(out):
    return out["image"].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_every_path_reads_the_same_pixels(cfg, kind, tmp_path):
    ext = ".gif" if kind == "animated" else ".png"
    path = _write(kind, str(tmp_path / f"{kind}{ext}"))
    expected = read_image_any(path, format=cfg.INPUT.FORMAT)  # what the demo and predict see
    assert expected.shape == (H, W, 3)
    ids = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 4
    label = str(tmp_path / "label.png")
    Image.fromarray(ids).save(label)
    record = {"file_name": path, "height": H, "width": W, "image_id": 1, "annotations": [],
              "sem_seg_file_name": label}

    paths = {
        "mask_former_instance_train": MaskFormerInstanceDatasetMapper(cfg, is_train=True),
        "mask_former_semantic_train": MaskFormerSemanticDatasetMapper(cfg, is_train=True),
        "default_train": build_default_mapper(cfg, is_train=True),  # Mask R-CNN training
        "default_test": build_default_mapper(cfg, is_train=False),  # every head's evaluation
    }
    for name, mapper in paths.items():
        out = mapper(record)
        assert np.array_equal(_pixels(out), expected), name
        if "sem_seg" in out:  # the class ids, read as they are
            assert np.array_equal(out["sem_seg"].numpy(), ids), name
    reference, _ = Reference(path, 0, mask_file=label).load()
    assert np.array_equal(reference, read_image_any(path, format="RGB"))


def test_16bit_images_are_scaled_not_clipped_and_labels_keep_their_ids(cfg, tmp_path):
    path = _write("16bit", str(tmp_path / "deep.png"))
    image = _pixels(MaskFormerInstanceDatasetMapper(cfg, is_train=True)(
        {"file_name": path, "height": H, "width": W, "image_id": 1, "annotations": []}))
    assert image.min() == 0 and image.max() == 255 and (image == 255).mean() < 0.01
    expected = np.round(_gradient16() / 65535 * 255).astype(np.uint8)
    assert np.abs(image[..., 0].astype(int) - expected).max() <= 1

    ids = np.zeros((H, W), np.uint16)
    ids[:, W // 2:] = 300  # a class id above 255 in a 16-bit label PNG
    label = str(tmp_path / "ids.png")
    Image.fromarray(ids).save(label)
    out = MaskFormerSemanticDatasetMapper(cfg, is_train=True)(
        {"file_name": path, "height": H, "width": W, "sem_seg_file_name": label})
    assert np.array_equal(out["sem_seg"].numpy(), ids.astype(np.int64))
    assert out["instances"].gt_classes.tolist() == [0, 300]


def _coco_json(tmp_path, images, annotations):
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return str(path)


def _image(i, name):
    return {"id": i, "file_name": name, "height": H, "width": W}


def _annotation(i, image_id):
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16,
            "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]}


def test_duplicate_image_ids_are_refused_by_name(tmp_path):
    json_file = _coco_json(tmp_path, [_image(1, "a.png"), _image(2, "b.png"),
                                      _image(1, "c.png")],
                           [_annotation(1, 1), _annotation(2, 2)])
    with pytest.raises(DatasetError, match=r"dup\.json: image id 1 .*'a\.png' and 'c\.png'"):
        load_coco_instances("dup_images", json_file, str(tmp_path))


def test_duplicate_annotation_ids_are_refused_by_name(tmp_path):
    json_file = _coco_json(tmp_path, [_image(1, "a.png"), _image(2, "b.png")],
                           [_annotation(5, 1), _annotation(7, 1), _annotation(7, 2)])
    with pytest.raises(DatasetError,
                       match=r"dup\.json: annotation id 7 .*image ids 1 and 2"):
        load_coco_instances("dup_annotations", json_file, str(tmp_path))


def test_one_mask_rule_for_training_and_prototypes():
    square = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0]
    assert has_mask([square]) and has_mask([[1.0, 2.0], square]) and has_mask([tuple(square)])
    assert has_mask({"size": [4, 4], "counts": "04"})
    for none in (None, [], [[1.0, 2.0, 3.0, 4.0]], square, {"size": [4, 4], "counts": ""},
                 {"size": [4, 4]}):
        assert not has_mask(none), none
