"""Panoptic segmentation end to end: the synthetic COCO panoptic dataset, COCO panoptic data
registered by config and command line, the panoptic LSJ mapper, the trainer's
COCOPanopticEvaluator (PQ), the built-in COCO panoptic names and the demo's drawing."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluators
from PIL import Image

from d2ext.data.dataset_mappers import MAPPERS, build_train_mapper
from d2ext.data.dataset_mappers.mask_former_panoptic_mapper import (
    MaskFormerPanopticDatasetMapper,
    rgb_to_segment_ids,
)
from d2ext.data.datasets import DatasetError
from d2ext.engine import Trainer, draw_predictions

from helpers import is_score

TRAIN, VAL = "d2ext_synthetic_panoptic_train", "d2ext_synthetic_panoptic_val"
PQ_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


def _ids(record):
    return rgb_to_segment_ids(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))


@pytest.fixture
def panoptic_cfg(tiny_config):
    # LSJ at the images' size, so the tiny model trains on 128-px crops.
    return tiny_config("quickstart_panoptic.yaml", "INPUT.IMAGE_SIZE", "128")


def test_synthetic_panoptic_is_coco_panoptic_with_things_and_stuff(panoptic_cfg):
    meta = MetadataCatalog.get(VAL)
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.generated_on_load
    assert meta.thing_classes == meta.stuff_classes == \
        ["circle", "square", "triangle", "star", "sky", "ground"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
    assert meta.stuff_dataset_id_to_contiguous_id == {5: 4, 6: 5}
    assert panoptic_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(meta.thing_classes)
    records = DatasetCatalog.get(VAL)
    assert len(records) == 6 and os.path.isfile(meta.panoptic_json)
    stuff_seen = set()
    for record in records:
        ids = _ids(record)
        segments = {s["id"]: s for s in record["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segments)  # every PNG id is a listed segment
        for s in segments.values():
            assert s["isthing"] == (s["category_id"] < 4)
            assert (ids == s["id"]).sum() == s["area"]
        stuff_seen |= {s["category_id"] for s in segments.values() if not s["isthing"]}
        assert any(s["isthing"] for s in segments.values())
    assert stuff_seen == {4, 5}


def test_panoptic_mapper_gives_one_target_per_segment_and_skips_crowd(panoptic_cfg):
    assert MAPPERS["mask_former_panoptic_lsj"] is MaskFormerPanopticDatasetMapper
    record = DatasetCatalog.get(TRAIN)[0]
    record["segments_info"][0]["iscrowd"] = 1  # a crowd segment is no target
    mapper = MaskFormerPanopticDatasetMapper(is_train=True, augmentations=[],
                                             image_format="RGB")
    out = mapper(record)
    ids, kept = _ids(record), record["segments_info"][1:]
    assert out["image"].shape == (3,) + ids.shape and out["image"].dtype == torch.uint8
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [s["category_id"] for s in kept]
    expected = np.stack([ids == s["id"] for s in kept])
    assert torch.equal(instances.gt_masks.tensor, torch.from_numpy(expected))
    assert "pan_seg_file_name" not in out

    # The configured mapper: LSJ moves masks with the image; masks stay disjoint.
    lsj = build_train_mapper(panoptic_cfg)
    assert isinstance(lsj, MaskFormerPanopticDatasetMapper)
    out = lsj(DatasetCatalog.get(TRAIN)[1])
    masks = out["instances"].gt_masks.tensor
    assert masks.shape[1:] == out["image"].shape[1:] and max(masks.shape[1:]) <= 128
    assert masks.sum(0).max() <= 1 and masks.flatten(1).any(1).all()
    # Padded to the LSJ square (the recipe's default): the padding belongs to no segment.
    padded = panoptic_cfg.clone()
    padded.defrost()
    padded.INPUT.merge_from_list(["LSJ_PAD", True, "IMAGE_SIZE", 256, "MIN_SCALE", 0.5,
                                  "MAX_SCALE", 0.5, "RANDOM_FLIP", "none"])
    out = build_train_mapper(padded)(DatasetCatalog.get(TRAIN)[1])
    masks = out["instances"].gt_masks.tensor
    assert out["image"].shape[1:] == masks.shape[1:] == (256, 256)
    assert not masks[:, 128:].any() and not masks[:, :, 128:].any()
    assert masks[:, :128, :128].any(0).float().mean() > 0.95  # the image: segments, bar void
    # At inference the mapper gives the image only (the evaluator reads the PNGs itself).
    test = MaskFormerPanopticDatasetMapper(is_train=False, augmentations=[], image_format="RGB")
    assert "instances" not in test(record)


def test_panoptic_mapper_reads_detectron2s_coco_panoptic_records(panoptic_cfg, tmp_path):
    """The records detectron2's loader gives coco_2017_*_panoptic (COCO's layout: .jpg images
    named like their PNGs) train as d2ext's own do."""
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    meta = MetadataCatalog.get(VAL)
    ours = DatasetCatalog.get(VAL)[:2]
    for r in ours:
        stem = os.path.splitext(os.path.basename(r["file_name"]))[0]
        Image.open(r["file_name"]).convert("RGB").save(tmp_path / f"{stem}.jpg", quality=95)
    records = load_coco_panoptic_json(meta.panoptic_json, str(tmp_path), meta.panoptic_root,
                                      meta.as_dict())[:2]
    mapper = MaskFormerPanopticDatasetMapper(is_train=True, augmentations=[],
                                             image_format="RGB")
    for theirs, mine in zip(records, ours):
        a, b = mapper(theirs)["instances"], mapper(mine)["instances"]
        assert torch.equal(a.gt_classes, b.gt_classes) and len(a) > 0
        assert torch.equal(a.gt_masks.tensor, b.gt_masks.tensor)


def _user_copy(tmp_path, split_dir, **edit):
    """The synthetic val split's panoptic json, rewritten with ``edit`` applied to it."""
    with open(os.path.join(split_dir, "panoptic.json")) as f:
        data = json.load(f)
    for key, fn in edit.items():
        data[key] = fn(data[key])
    path = tmp_path / "user_panoptic.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_register_coco_panoptic_by_config_and_command_line(panoptic_cfg, tmp_path):
    from d2ext.cli.train_net import argument_parser
    from d2ext.engine import setup_cfg

    from helpers import config_file, tiny_opts

    split = os.path.dirname(MetadataCatalog.get(VAL).panoptic_json)
    DatasetCatalog.get(VAL)  # generated
    files = [os.path.join(split, "panoptic.json"), os.path.join(split, "panoptic"),
             os.path.join(split, "images")]
    args = argument_parser().parse_args(
        ["--config-file", "x.yaml", "--register-coco-panoptic", "my_panoptic_val", *files])
    assert args.register_coco_panoptic == [["my_panoptic_val", *files]]
    opts = tiny_opts(os.path.dirname(os.path.dirname(split)), tmp_path) + [
        "DATASETS.TEST", "('my_panoptic_val',)"]
    cfg = setup_cfg(config_file("quickstart_panoptic.yaml"), opts,
                    coco_panoptic_datasets=args.register_coco_panoptic)
    assert cfg.DATASETS.COCO_PANOPTIC == [["my_panoptic_val", *files]]
    meta, synthetic = MetadataCatalog.get("my_panoptic_val"), MetadataCatalog.get(VAL)
    for field in ("evaluator_type", "thing_classes", "stuff_classes", "panoptic_root",
                  "thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        assert getattr(meta, field) == getattr(synthetic, field), field
    assert [r["segments_info"] for r in DatasetCatalog.get("my_panoptic_val")] == \
        [r["segments_info"] for r in DatasetCatalog.get(VAL)]
    evaluator = Trainer.build_evaluator(cfg, "my_panoptic_val", str(tmp_path / "eval"))
    assert isinstance(evaluator, DatasetEvaluators)
    assert [type(e) for e in evaluator._evaluators] == [COCOPanopticEvaluator]

    # User mistakes: one line each, naming the file or key.
    config = config_file("quickstart_panoptic.yaml")
    mistakes = [
        (["DATASETS.COCO_PANOPTIC", f"[['bad', '{files[0]}', '{files[1]}']]"], (), "COCO_PANOPTIC"),
        ((), [("bad2", str(tmp_path / "none.json"), files[1], files[2])], "none.json"),
        ((), [("bad3", files[0], str(tmp_path / "no_dir"), files[2])], "no_dir"),
        ((), [("bad4", _user_copy(tmp_path, split, categories=lambda cs: [
            {k: v for k, v in c.items() if k != "isthing"} for c in cs]), *files[1:])],
         "isthing"),
    ]
    for extra_opts, datasets, named in mistakes:
        with pytest.raises(DatasetError) as err:
            setup_cfg(config, tiny_opts(str(tmp_path), tmp_path) + list(extra_opts),
                      coco_panoptic_datasets=datasets)
        assert named in str(err.value) and "\n" not in str(err.value)
    # Segments of a category the json does not list: refused when the data is loaded.
    setup_cfg(config, tiny_opts(str(tmp_path), tmp_path), coco_panoptic_datasets=[(
        "bad5", _user_copy(tmp_path, split, categories=lambda cs: cs[:-1]), *files[1:])])
    with pytest.raises(DatasetError, match="category_id 6"):
        DatasetCatalog.get("bad5")


def test_builtin_coco_panoptic_names_fit_the_panoptic_recipe(tmp_path):
    from helpers import make_cfg

    cfg = make_cfg("dinov3_mask2former_panoptic.yaml", "MODEL.DEVICE", "cpu",
                   "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False")
    assert cfg.INPUT.DATASET_MAPPER_NAME == "mask_former_panoptic_lsj"
    for name in ("coco_2017_train_panoptic", "coco_2017_val_panoptic"):
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco_panoptic_seg"
        assert len(meta.thing_classes) == len(meta.stuff_classes) == 133 == \
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        assert sorted(meta.thing_dataset_id_to_contiguous_id.values()) == list(range(80))
        assert len(meta.stuff_dataset_id_to_contiguous_id) == 53
        assert meta.panoptic_json and meta.panoptic_root
    evaluator = Trainer.build_evaluator(cfg, "coco_2017_val_panoptic", str(tmp_path))
    assert [type(e) for e in evaluator._evaluators] == [COCOPanopticEvaluator]
    cfg.defrost()
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    with pytest.raises(ValueError, match="panoptic_seg"):
        Trainer.build_evaluator(cfg, "coco_2017_val_panoptic", str(tmp_path))


def test_demo_draws_panoptic_segments(panoptic_cfg):
    record = DatasetCatalog.get(VAL)[0]
    ids = _ids(record)
    segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                for s in record["segments_info"]]
    image = np.asarray(Image.open(record["file_name"]).convert("RGB"))[:, :, ::-1].copy()
    outputs = {"panoptic_seg": (torch.from_numpy(ids).int(), segments)}
    meta = MetadataCatalog.get(VAL)
    drawn = draw_predictions(image, outputs, meta)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn != image[:, :, ::-1]).any(axis=-1).mean() > 0.5  # segments are painted
    small = draw_predictions(image, outputs, meta, max_side=64)  # resampled before drawing
    assert small.shape == (64, 64, 3)


@pytest.mark.slow
def test_quickstart_panoptic_trains_and_reports_pq(synthetic_root, tmp_path):
    """configs/quickstart_panoptic.yaml through tools/train_net.py, evaluated on the val split
    registered as a user's data with --register-coco-panoptic."""
    from d2ext.cli.train_net import cli
    from d2ext.engine import setup_cfg

    from helpers import config_file, tiny_opts

    out = tmp_path / "out"
    opts = tiny_opts(synthetic_root, out, max_iter=3) + ["INPUT.IMAGE_SIZE", "128"]
    setup_cfg(config_file("quickstart_panoptic.yaml"), opts)
    DatasetCatalog.get(VAL)  # the split's files, to register as a user dataset
    split = os.path.dirname(MetadataCatalog.get(VAL).panoptic_json)
    argv = ["--config-file", config_file("quickstart_panoptic.yaml"),
            "--register-coco-panoptic", "user_panoptic_val", os.path.join(split, "panoptic.json"),
            os.path.join(split, "panoptic"), os.path.join(split, "images"),
            *opts, "DATASETS.TEST", "('user_panoptic_val',)"]
    assert cli(argv) == 0
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f]
    final = next(m for m in reversed(metrics) if "panoptic_seg/PQ" in m)
    for key in PQ_KEYS:
        assert is_score(final[f"panoptic_seg/{key}"]), key
