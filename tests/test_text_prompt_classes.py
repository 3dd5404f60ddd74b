"""SAM 3 text prompts on a user's own COCO json (--register-coco) whose category ids are not
0..K-1: the dataset's classes are known from registration on, prompted names are matched to them
by name in any order, and a detection is written under the category id of its class's name."""
import argparse
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from PIL import Image

from d2ext.cli.demo import text_prompt_opts
from d2ext.data.datasets import evaluation_thing_classes, read_categories, register_coco_dataset
from d2ext.engine import setup_cfg
from d2ext.modeling.text_prompt import TextPromptError

from helpers import config_file, sam3_opts

# Listed out of id order, as a user's json may be; ids with gaps, as after deleting classes.
CATEGORIES = [dict(id=20, name="dice"), dict(id=3, name="duck"), dict(id=11, name="panda")]
DATASET_CLASSES = ["duck", "panda", "dice"]  # by id, as detectron2's load_coco_json orders them
ID_OF = {c["name"]: c["id"] for c in CATEGORIES}
SIZE = 32


def write_coco(tmp_path, extra=None):
    """A one-image COCO dataset with one instance of each category; returns (json, image root).
    ``extra`` adds top-level keys."""
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(root / "a.png")
    anns = []
    for k, cat in enumerate(CATEGORIES):
        x = 2 + 10 * k
        anns.append(dict(id=k + 1, image_id=1, category_id=cat["id"], iscrowd=0, area=48,
                         bbox=[x, 4, 6, 8], segmentation=[[x, 4, x + 6, 4, x + 6, 12, x, 12]]))
    data = dict(images=[dict(id=1, file_name="a.png", height=SIZE, width=SIZE)],
                annotations=anns, categories=CATEGORIES, **(extra or {}))
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), str(root)


def register(tmp_path, *opts, extra=None):
    """configs/sam3_text.yaml on the CPU with the json registered as --register-coco does and
    set as DATASETS.TEST; returns (cfg, dataset name)."""
    name = f"tp_classes_{tmp_path.name}"
    json_file, root = write_coco(tmp_path, extra)
    cfg = setup_cfg(config_file("sam3_text.yaml"),
                    ["MODEL.DEVICE", "cpu", "DATASETS.TEST", f"('{name}',)", *opts],
                    coco_datasets=[(name, json_file, root)])
    return cfg, name


def test_classes_are_known_at_registration_as_load_coco_json_sets_them(tmp_path):
    cfg, name = register(tmp_path)
    meta = MetadataCatalog.get(name)  # nothing has loaded the dataset yet
    assert meta.thing_classes == DATASET_CLASSES
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 11: 1, 20: 2}
    assert evaluation_thing_classes(cfg) == DATASET_CLASSES
    dicts = DatasetCatalog.get(name)  # detectron2 sets the same values again: no conflict
    assert meta.thing_classes == DATASET_CLASSES
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 11: 1, 20: 2}
    # the loaded annotations use the same contiguous ids
    assert sorted(a["category_id"] for a in dicts[0]["annotations"]) == [0, 1, 2]


def test_categories_are_read_past_nested_and_quoted_keys(tmp_path):
    """Only the top-level "categories" count: not a key of that name inside another object, nor
    one whose name merely ends in '"categories', nor text in a string."""
    decoy = [dict(id=1, name="star")]
    cfg, name = register(tmp_path, extra=dict(
        info=dict(description='not "categories": [{"id": 1, "name": "star"}]'),
        licenses=[dict(id=1, categories=decoy)]))
    assert MetadataCatalog.get(name).thing_classes == DATASET_CLASSES
    quoted = tmp_path / "quoted.json"
    quoted.write_text(json.dumps({'say "categories': decoy, "categories": CATEGORIES}))
    assert read_categories(str(quoted)) == CATEGORIES
    quoted.write_text(json.dumps({'say "categories': decoy}))
    assert read_categories(str(quoted)) is None
    assert read_categories(str(tmp_path / "images" / "a.png")) is None  # not JSON


def test_shuffled_classes_keep_the_category_ids_of_their_names(sam3_dir, tmp_path):
    prompted = ["dice", "duck", "panda"]  # not the dataset's order
    cfg, name = register(tmp_path, *sam3_opts(sam3_dir),
                         "MODEL.TEXT_PROMPT.CLASSES", str(prompted),
                         "MODEL.TEXT_PROMPT.PROMPTS", "['', 'rubber duck', '']")
    model = build_model(cfg)
    assert model.class_names == DATASET_CLASSES
    assert model.phrases == ["dice", "rubber duck", "panda"]
    assert model.phrase_classes.tolist() == [2, 0, 1]
    # COCOEvaluator writes class index i as the dataset id that its mapping sends to i
    to_id = {v: k for k, v in MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id.items()}
    for phrase, c in zip(prompted, model.phrase_classes.tolist()):
        assert to_id[c] == ID_OF[phrase]

    # One detection per phrase, each in its own place with its own score, through the model's
    # inference and detectron2's COCOEvaluator: each is written under its name's category id.
    scores = torch.tensor([0.9, 0.8, 0.7])
    logits = torch.full((3, SIZE, SIZE), -20.0)
    for k in range(3):
        logits[k, 4:12, 2 + 10 * k:8 + 10 * k] = 20.0
    model.detect = lambda image: (scores, model.phrase_classes.clone(), logits)
    record = DatasetCatalog.get(name)[0]
    inputs = [dict(record, image=torch.zeros(3, SIZE, SIZE))]
    outputs = model(inputs)
    evaluator = COCOEvaluator(name, tasks=("segm",), output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    with open(tmp_path / "eval" / "coco_instances_results.json") as f:
        written = {round(r["score"], 2): r["category_id"] for r in json.load(f)}
    assert written == {0.9: ID_OF["dice"], 0.8: ID_OF["duck"], 0.7: ID_OF["panda"]}
    assert results["segm"]["AP50"] == pytest.approx(100.0)  # each on its category's object


def test_a_subset_in_any_order_and_unknown_names(sam3_dir, tmp_path):
    cfg, name = register(tmp_path, *sam3_opts(sam3_dir),
                         "MODEL.TEXT_PROMPT.CLASSES", "['dice', 'duck']")
    model = build_model(cfg)
    assert model.class_names == DATASET_CLASSES and model.phrases == ["dice", "duck"]
    assert model.phrase_classes.tolist() == [2, 0]
    cfg.defrost()
    cfg.MODEL.TEXT_PROMPT.CLASSES = ["duck", "pandas"]
    with pytest.raises(TextPromptError) as err:
        build_model(cfg)
    message = str(err.value)
    assert "['pandas']" in message and name in message and "did you mean 'panda'" in message
    assert str(DATASET_CLASSES) in message and "\n" not in message


def test_demo_classes_keep_their_phrases_by_name(tmp_path):
    cfg, _ = register(tmp_path, "MODEL.TEXT_PROMPT.PROMPTS", "['a duck', '', 'a dice']")
    args = argparse.Namespace(classes=["dice", "star"], config_file="sam3_text.yaml")
    opts = dict(zip(*[iter(text_prompt_opts(cfg, args))] * 2))
    assert opts["MODEL.TEXT_PROMPT.CLASSES"] == ["dice", "star"]
    assert opts["MODEL.TEXT_PROMPT.PROMPTS"] == ["a dice", ""]
    assert opts["DATASETS.TEST"] == ()


@pytest.mark.parametrize("categories", [CATEGORIES, [dict(id=3)], []])
def test_registration_leaves_bad_categories_to_the_load(tmp_path, categories):
    """A json whose categories load_coco_json cannot use gets no classes at registration (the
    load reports it); a good one gets them."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(dict(images=[], annotations=[], categories=categories)))
    (tmp_path / "img").mkdir()
    name = f"tp_bad_{tmp_path.name}"
    register_coco_dataset(name, str(path), str(tmp_path / "img"))
    classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
    assert classes == (DATASET_CLASSES if categories == CATEGORIES else None)
