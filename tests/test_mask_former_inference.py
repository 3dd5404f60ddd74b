"""Instance, semantic and panoptic outputs of the Mask2Former-style post-processing, fed to
detectron2's own evaluators."""
import json
import os

import detectron2  # noqa: F401  (the tests require detectron2)
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from PIL import Image
from torch.nn import functional as F

from d2ext.engine import setup_cfg
from d2ext.modeling.postprocessing import (
    MaskFormerInference,
    instance_inference,
    resize_mask_logits,
)

from helpers import CONFIGS, is_score

NUM_CLASSES = 4  # the synthetic shapes


@pytest.fixture(scope="module")
def val_records(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    setup_cfg(os.path.join(CONFIGS, "quickstart_mask2former.yaml"),
              ["DATASETS.SYNTHETIC.ROOT", root, "DATASETS.SYNTHETIC.NUM_TRAIN", "2",
               "DATASETS.SYNTHETIC.NUM_VAL", "4", "DATASETS.SYNTHETIC.IMAGE_SIZE", "160",
               "MODEL.DEVICE", "cpu"])
    return DatasetCatalog.get("d2ext_synthetic_val")


def _segments(record):
    """The record's (contiguous class, (H, W) bool mask) pairs."""
    out = []
    for a in record["annotations"]:
        rle = a["segmentation"]
        if isinstance(rle["counts"], str):
            rle = dict(rle, counts=rle["counts"].encode())
        out.append((a["category_id"], mask_util.decode(rle).astype(bool)))
    return out


def _predict(segments, shape, pad=32, extra_queries=3, num_classes=NUM_CLASSES):
    """What a well-trained model outputs for these segments: confident class logits and mask
    logits at 1/4 of the input padded by ``pad`` pixels (so resizing and cropping are exercised).
    Returns (mask_cls (Q, K+1), mask_logits (Q, h/4, w/4), padded_size)."""
    h, w = shape
    padded = (h + pad, w + pad)
    q = len(segments) + extra_queries
    mask_cls = torch.full((q, num_classes + 1), -8.0)
    mask_cls[len(segments):, num_classes] = 8.0  # the extra queries predict "no object"
    full = torch.zeros(q, *padded)
    for i, (c, m) in enumerate(segments):
        mask_cls[i, c] = 8.0
        full[i, :h, :w] = torch.from_numpy(m).float()
    small = F.interpolate(full[None], scale_factor=0.25, mode="area")[0]
    return mask_cls, (small - 0.5) * 40, padded


def _evaluate(evaluator, records, postprocess):
    evaluator.reset()
    for r in records:
        segments = _segments(r)
        mask_cls, mask_logits, padded = _predict(segments, (r["height"], r["width"]))
        out = postprocess(mask_cls, mask_logits, padded, (r["height"], r["width"]),
                          (r["height"], r["width"]))
        evaluator.process([r], [out])
    return evaluator.evaluate()


def _bilinear_weights(out_len, image_len, padded_len, in_len):
    """(out_len, in_len) weights sampling ``in_len`` cells spread over ``padded_len`` pixels at
    the centres of ``out_len`` pixels spread over the first ``image_len`` pixels (edge clamped)."""
    src = (torch.arange(out_len, dtype=torch.float64) + 0.5) * image_len / out_len \
        * in_len / padded_len - 0.5
    src = src.clamp(0, in_len - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=in_len - 1)
    w = torch.zeros(out_len, in_len, dtype=torch.float64)
    w[torch.arange(out_len), lo] += 1 - (src - lo)
    w[torch.arange(out_len), hi] += src - lo
    return w


def test_resize_samples_logits_once_at_output_pixel_centres():
    logits = torch.randn(5, 12, 16, generator=torch.Generator().manual_seed(0))
    ours = resize_mask_logits(logits, (48, 64), (44, 60), (88, 120))
    rows = _bilinear_weights(88, 44, 48, 12)
    cols = _bilinear_weights(120, 60, 64, 16)
    exact = torch.einsum("yh,qhw,xw->qyx", rows, logits.double(), cols).float()
    assert ours.shape == (5, 88, 120)
    torch.testing.assert_close(ours, exact, atol=1e-5, rtol=1e-5)
    # Mask2Former's two passes (to the padded size, crop, resize) land close: they differ by
    # the blur of the second interpolation (~5% of the mean magnitude on white noise).
    up = F.interpolate(logits[None], size=(48, 64), mode="bilinear", align_corners=False)
    ref = F.interpolate(up[..., :44, :60], size=(88, 120), mode="bilinear",
                        align_corners=False)[0]
    assert (ours - ref).abs().mean() < 0.08 * ref.abs().mean()


def test_instance_output_gets_full_ap_from_coco_evaluator(val_records, tmp_path):
    post = MaskFormerInference(semantic_on=False, instance_on=True, panoptic_on=False, topk=20)
    evaluator = COCOEvaluator("d2ext_synthetic_val", output_dir=str(tmp_path), tasks=("segm",))
    results = _evaluate(evaluator, val_records, post)
    # Masks carried through 1/4 resolution, padding and resizing come back almost exact.
    assert is_score(results["segm"]["AP"]) and results["segm"]["AP"] > 80
    out = post(*_predict(_segments(val_records[0]), (160, 160)), (160, 160),
               (150, 170))["instances"]
    assert out.image_size == (150, 170) and out.pred_masks.shape[1:] == (150, 170)
    assert out.pred_boxes.tensor.shape == (len(out), 4) and (out.scores <= 1).all()


def _write_semantic_dataset(records, root):
    """Label PNGs from the synthetic instances: 0 = background, 1 + shape class; registered as
    a semantic dataset with 5 classes."""
    name = "m2f_test_semantic"
    items = []
    for r in records:
        label = np.zeros((r["height"], r["width"]), np.uint8)
        for c, m in _segments(r):
            label[m] = c + 1
        path = os.path.join(root, f"{r['image_id']}.png")
        Image.fromarray(label).save(path)
        items.append({"file_name": r["file_name"], "sem_seg_file_name": path,
                      "height": r["height"], "width": r["width"], "image_id": r["image_id"]})
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: items)
    MetadataCatalog.get(name).set(stuff_classes=["background", "circle", "square", "triangle",
                                                 "star"], ignore_label=255,
                                  evaluator_type="sem_seg")
    return name, items


def test_semantic_output_gets_high_miou_from_sem_seg_evaluator(val_records, tmp_path):
    name, items = _write_semantic_dataset(val_records, str(tmp_path))
    post = MaskFormerInference(semantic_on=True, instance_on=False, panoptic_on=False)
    evaluator = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    for r in items:
        label = np.array(Image.open(r["sem_seg_file_name"]))
        segments = [(int(c), label == c) for c in np.unique(label)]
        mask_cls, mask_logits, padded = _predict(segments, label.shape, num_classes=5)
        out = post(mask_cls, mask_logits, padded, label.shape, label.shape)
        assert out["sem_seg"].shape == (5,) + label.shape
        evaluator.process([r], [out])
    miou = evaluator.evaluate()["sem_seg"]["mIoU"]
    assert is_score(miou) and miou > 80


def _panoptic_ground_truth(records, root):
    """COCO panoptic files for the synthetic val images: the shapes are things (dataset ids
    1..4), the background is one stuff segment (dataset id 5)."""
    gt_dir = os.path.join(root, "panoptic_gt")
    os.makedirs(gt_dir)
    annotations = []
    for r in records:
        ids = np.zeros((r["height"], r["width"]), np.int64)
        segments = []
        background = np.ones_like(ids, dtype=bool)
        for i, (c, m) in enumerate(_segments(r)):
            ids[m] = i + 1
            background &= ~m
            segments.append({"id": i + 1, "category_id": c + 1, "iscrowd": 0,
                             "area": int(m.sum())})
        ids[background] = 100
        segments.append({"id": 100, "category_id": 5, "iscrowd": 0,
                         "area": int(background.sum())})
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        png = f"{r['image_id']}.png"
        Image.fromarray(rgb).save(os.path.join(gt_dir, png))
        annotations.append({"image_id": r["image_id"], "file_name": png,
                            "segments_info": segments})
    categories = [{"id": i + 1, "name": n, "isthing": 1}
                  for i, n in enumerate(["circle", "square", "triangle", "star"])]
    categories.append({"id": 5, "name": "background", "isthing": 0})
    images = [{"id": r["image_id"], "file_name": os.path.basename(r["file_name"]),
               "height": r["height"], "width": r["width"]} for r in records]
    gt_json = os.path.join(root, "panoptic_gt.json")
    with open(gt_json, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    name = "m2f_test_panoptic"
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(
        panoptic_json=gt_json, panoptic_root=gt_dir, evaluator_type="coco_panoptic_seg",
        thing_dataset_id_to_contiguous_id={i: i - 1 for i in range(1, 5)},
        stuff_dataset_id_to_contiguous_id={5: 4})
    return name


def _panoptic_outputs(records):
    post = MaskFormerInference(semantic_on=False, instance_on=True, panoptic_on=True, topk=20,
                               object_mask_threshold=0.5, overlap_threshold=0.5,
                               thing_ids=[0, 1, 2, 3])
    outputs = []
    for r in records:
        segments = [(c, m) for c, m in _segments(r) if m.any()]
        background = ~np.any([m for _, m in segments], axis=0)
        # 5 classes: the 4 shapes (things) and the background (stuff)
        mask_cls, mask_logits, padded = _predict(segments + [(4, background)],
                                                 (r["height"], r["width"]), num_classes=5)
        out = post(mask_cls, mask_logits, padded, (r["height"], r["width"]),
                   (r["height"], r["width"]))
        outputs.append((segments, out))
    return outputs


def test_panoptic_output_has_one_segment_per_instance_and_merged_stuff(val_records):
    for segments, out in _panoptic_outputs(val_records):
        ids, info = out["panoptic_seg"]
        assert ids.dtype == torch.int32 and ids.shape == segments[0][1].shape
        assert sorted(s["id"] for s in info) == sorted(set(ids.unique().tolist()) - {0})
        assert sum(s["isthing"] for s in info) == len(segments)
        assert [s["category_id"] for s in info if not s["isthing"]] == [4]
        # Instances: only thing classes when panoptic is on.
        assert (out["instances"].pred_classes < 4).all()


def test_panoptic_output_evaluates_with_coco_panoptic_evaluator(val_records, tmp_path):
    pytest.importorskip("panopticapi", reason="COCOPanopticEvaluator needs panopticapi "
                        "(not on PyPI; install it from the cocodataset/panopticapi repository)")
    name = _panoptic_ground_truth(val_records, str(tmp_path))
    evaluator = COCOPanopticEvaluator(name, output_dir=str(tmp_path))
    evaluator.reset()
    for r, (_, out) in zip(val_records, _panoptic_outputs(val_records)):
        evaluator.process([r], [out])
    pq = evaluator.evaluate()["panoptic_seg"]["PQ"]
    assert is_score(pq) and pq > 80


def test_mask_boxes_equal_detectron2_bitmasks():
    from detectron2.structures import BitMasks

    from d2ext.modeling.mask_ops import mask_boxes

    masks = torch.rand(6, 23, 31) > 0.97
    masks[0] = False  # empty
    masks[1] = False
    masks[1, 22, 30] = True  # one pixel in the corner
    assert torch.equal(mask_boxes(masks), BitMasks(masks).get_bounding_boxes().tensor)


def test_instances_equal_full_resolution_threshold_for_repeated_queries():
    """Chunked full-resolution masks: each selection gets its query's mask (> 0 of the resized
    logits) and box, also when one query is selected for several classes."""
    torch.manual_seed(0)
    mask_cls, mask_logits = torch.randn(11, 4), torch.randn(11, 8, 10) * 3
    post = MaskFormerInference(semantic_on=False, instance_on=True, panoptic_on=False, topk=30)
    out = post(mask_cls, mask_logits, (32, 40), (30, 37), (45, 50))["instances"]
    full = resize_mask_logits(mask_logits, (32, 40), (30, 37), (45, 50))
    probs = mask_cls.softmax(-1)[:, :-1]
    assert len(out) == 30 and len(set(out.pred_classes.tolist())) > 1
    for mask, box, cls, score in zip(out.pred_masks, out.pred_boxes.tensor, out.pred_classes,
                                     out.scores):
        matches = [q for q in range(11) if torch.equal(mask, full[q] > 0)]
        assert matches, "every mask is the thresholded full-resolution logits of a query"
        q = matches[0]
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert score <= probs[q, cls] + 1e-6


def test_each_instance_gets_its_own_querys_mask_in_any_selection_order():
    # A top-k selection comes in no particular query order; masks must follow it, not the
    # sorted order of the distinct queries.
    mask_logits = torch.full((3, 4, 4), -5.0)
    for q in range(3):
        mask_logits[q, q] = 5.0  # query q covers row q
    queries = torch.tensor([2, 0, 1])
    inst = instance_inference(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([5, 6, 7]), queries,
                              (4, 4), mask_logits.__getitem__)
    for mask, q in zip(inst.pred_masks, queries.tolist()):
        assert mask[q].all() and mask.sum() == 4
    assert inst.pred_boxes.tensor[:, 1].tolist() == [2.0, 0.0, 1.0]
