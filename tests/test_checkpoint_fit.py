"""A MODEL.WEIGHTS checkpoint must fit the model the config builds (refused in one line
otherwise), and d2ext checkpoints carry the classes they were trained on."""
import logging
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from d2ext.checkpoint import AtomicCheckpointer, CheckpointError
from d2ext.cli import train_net
from d2ext.data.datasets import SYNTHETIC_CLASSES
from d2ext.engine import Trainer, load_predictor, setup_cfg
from d2ext.engine.predictor import predictor_metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANIMALS = ["panda", "dice", "duck", "owl"]  # as many classes as the synthetic shapes


def tiny(name, synthetic_root, output_dir, *opts):
    """configs/<name> on a few 128-px synthetic images, on the CPU, then ``opts``."""
    return setup_cfg(os.path.join(REPO, "configs", name), [
        "DATASETS.SYNTHETIC.ROOT", synthetic_root, "DATASETS.SYNTHETIC.NUM_TRAIN", "12",
        "DATASETS.SYNTHETIC.NUM_VAL", "6", "DATASETS.SYNTHETIC.IMAGE_SIZE", "128",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
        "D2EXT.SAVE_DEMO_IMAGE", "False", "OUTPUT_DIR", str(output_dir), "SEED", "1",
        "MODEL.DEVICE", "cpu", *opts])


@pytest.fixture(scope="module")
def saved(synthetic_root, tmp_path_factory):
    """Checkpoints saved from freshly built tiny models (no training): {name: path}."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = folder / "out"
    models = {"rcnn": ("quickstart.yaml",), "eomt": ("quickstart_eomt.yaml",),
              "rcnn5": ("quickstart.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", "5")}
    for name, (config, *opts) in models.items():
        model = build_model(tiny(config, synthetic_root, out, *opts))
        AtomicCheckpointer(model, str(folder)).save(name)
    return {name: str(folder / f"{name}.pth") for name in models}


def one_line(err):
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_of_another_architecture_is_refused_naming_both(saved, synthetic_root,
                                                                    tmp_path):
    cfg = tiny("quickstart_mask2former.yaml", synthetic_root, tmp_path,
               "MODEL.WEIGHTS", saved["rcnn"])
    with pytest.raises(CheckpointError) as err:
        load_predictor(cfg)  # the demo, curation predict, export
    message = one_line(err)
    assert message.startswith(f"MODEL.WEIGHTS {saved['rcnn']} holds a GeneralizedRCNN model (")
    assert "roi_heads.*" in message and "proposal_generator.*" in message
    assert "the config builds DinoMask2Former: " in message
    assert message.endswith("use a checkpoint of this architecture or fix "
                            "MODEL.META_ARCHITECTURE.")
    with pytest.raises(CheckpointError, match="holds a GeneralizedRCNN model"):
        train_net.load_eval_weights(cfg, build_model(cfg))  # --eval-only
    # Fine-tuning too refuses a checkpoint holding less than half of the model.
    with pytest.raises(CheckpointError) as err:
        AtomicCheckpointer(build_model(cfg), cfg=cfg).load(saved["eomt"])
    assert "holds an EoMT model" in one_line(err)
    assert "(100% of its parameters) are not in the checkpoint" in str(err.value)


def test_another_class_count_is_refused_for_evaluation_and_fine_tuned_from(
        saved, synthetic_root, tmp_path, caplog):
    cfg = tiny("quickstart.yaml", synthetic_root, tmp_path, "MODEL.WEIGHTS", saved["rcnn5"])
    expected = (f"MODEL.WEIGHTS {saved['rcnn5']} holds a GeneralizedRCNN trained for 5 classes "
                r"\(roi_heads.box_predictor.cls_score.weight: \(6, 256\) there, \(5, 256\) here\);"
                r" the config builds it for 4 \(MODEL.ROI_HEADS.NUM_CLASSES 4\); set "
                "MODEL.ROI_HEADS.NUM_CLASSES 5 to run this checkpoint")
    with pytest.raises(CheckpointError, match=expected):
        load_predictor(cfg)
    with pytest.raises(CheckpointError, match=expected):
        train_net.load_eval_weights(cfg, build_model(cfg))

    trainer = Trainer(cfg)
    with caplog.at_level(logging.WARNING):
        trainer.resume_or_load(resume=False)  # fine-tuning: the class predictor starts afresh
    warned = [r.getMessage() for r in caplog.records if "trained for 5 classes" in r.getMessage()]
    assert warned == [f"MODEL.WEIGHTS {saved['rcnn5']} was trained for 5 classes and "
                      "MODEL.ROI_HEADS.NUM_CLASSES is 4: its class predictor (6 tensors in "
                      "roi_heads.box_predictor.*, roi_heads.mask_head.*) is not loaded and is "
                      "trained from scratch."]
    state = torch.load(saved["rcnn5"], weights_only=True)["model"]
    model = trainer.checkpointer.model
    assert torch.equal(model.roi_heads.box_head.fc1.weight, state["roi_heads.box_head.fc1.weight"])

    # A resume of the trainer's own last checkpoint must fit exactly.
    trainer.checkpointer.save("model_0000000")
    other = Trainer(tiny("quickstart.yaml", synthetic_root, tmp_path,
                         "MODEL.ROI_HEADS.NUM_CLASSES", "5"))
    with pytest.raises(CheckpointError, match=r"model_0000000.pth \(the last_checkpoint of .*, "
                                              r"--resume\) holds a GeneralizedRCNN trained for 4"):
        other.resume_or_load(resume=True)


def test_a_missing_or_truncated_weights_file_is_one_line_naming_it(saved, synthetic_root,
                                                                  tmp_path):
    with open(saved["rcnn"], "rb") as f:
        data = f.read()
    cut_short = "not a PyTorch checkpoint that torch.load can read, or one cut short"
    for name, size, says in (("half.pth", len(data) // 2, cut_short),
                             ("early.pth", 20000, cut_short), ("empty.pth", 0, cut_short),
                             ("nothing.pth", None, "no such file")):
        path = str(tmp_path / name)
        if size is not None:
            (tmp_path / name).write_bytes(data[:size])
        cfg = tiny("quickstart.yaml", synthetic_root, tmp_path, "MODEL.WEIGHTS", path)
        with pytest.raises(CheckpointError) as err:
            load_predictor(cfg)
        assert one_line(err).startswith(f"MODEL.WEIGHTS {path}: {says}")
        assert "internal miniz error" not in str(err.value)  # torch's advice is left out


@pytest.fixture
def animals(synthetic_root, tmp_path):
    """'ckfit_animals': the synthetic training images, their classes named otherwise."""
    tiny("quickstart.yaml", synthetic_root, tmp_path)  # (re-)registers the synthetic data
    name = "ckfit_animals"
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: DatasetCatalog.get("d2ext_synthetic_train"))
    MetadataCatalog.get(name).set(thing_classes=ANIMALS, evaluator_type="coco",
                                  thing_dataset_id_to_contiguous_id={7: 0, 8: 1, 9: 2, 10: 3})
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_trainer_checkpoints_carry_their_classes_and_predictions_are_named_with_them(
        animals, saved, synthetic_root, tmp_path, caplog):
    out = tmp_path / "train"
    trainer = Trainer(tiny("quickstart.yaml", synthetic_root, out, "DATASETS.TRAIN",
                           f"('{animals}',)"))
    trainer.checkpointer.save("model_final")
    weights = str(out / "model_final.pth")
    data = torch.load(weights, weights_only=True)
    assert data["classes"] == {"dataset": animals, "thing_classes": ANIMALS,
                               "thing_dataset_id_to_contiguous_id": {7: 0, 8: 1, 9: 2, 10: 3}}
    assert data["meta_architecture"] == "GeneralizedRCNN"

    # The demo's config names the synthetic shapes: the checkpoint's names are drawn.
    cfg = tiny("quickstart.yaml", synthetic_root, tmp_path, "MODEL.WEIGHTS", weights)
    with caplog.at_level(logging.WARNING, logger="d2ext"):
        predictor = load_predictor(cfg)
    assert predictor.class_names == ANIMALS
    assert predictor_metadata(cfg, predictor).thing_classes == ANIMALS
    warned = [r.getMessage() for r in caplog.records
              if "named with the checkpoint" in r.getMessage()]
    assert len(warned) == 1 and str(ANIMALS) in warned[0] and str(SYNTHETIC_CLASSES) in warned[0]

    # Evaluation on a dataset of other class names stops naming both lists ...
    with pytest.raises(CheckpointError) as err:
        train_net.load_eval_weights(cfg, build_model(cfg))
    assert one_line(err).startswith(
        f"MODEL.WEIGHTS {weights} was trained on {animals!r} with classes {ANIMALS}, but "
        f"DATASETS.TEST 'd2ext_synthetic_val' has {SYNTHETIC_CLASSES} (class 0 is 'panda' "
        "against 'circle')")
    # ... and goes on with its own.
    same = tiny("quickstart.yaml", synthetic_root, tmp_path, "MODEL.WEIGHTS", weights,
                "DATASETS.TEST", f"('{animals}',)")
    assert train_net.load_eval_weights(same, build_model(same))["classes"]["dataset"] == animals

    # A checkpoint without classes (saved before d2ext recorded them) names nothing.
    old = load_predictor(tiny("quickstart.yaml", synthetic_root, tmp_path,
                              "MODEL.WEIGHTS", saved["rcnn"]))
    assert old.class_names is None and old.metadata.thing_classes == SYNTHETIC_CLASSES
