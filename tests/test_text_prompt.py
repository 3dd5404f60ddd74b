"""TextPromptSegmentor (SAM 3 text prompts) on a tiny random SAM 3 saved as a user's directory:
the detections transformers' own pipeline gives, every size, classes, COCO evaluation, bad input."""
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2ext.engine import load_predictor, setup_cfg
from d2ext.modeling.text_prompt import TextPromptError

from helpers import CONFIGS, SAM3_SIZE, cpu_config, is_score, sam3_opts, tiny_opts


def text_cfg(sam3_dir, *opts):
    """configs/sam3_text.yaml on the tiny SAM 3 in ``sam3_dir``, on the CPU, without a test
    dataset, then ``opts``."""
    return cpu_config("sam3_text.yaml", *sam3_opts(sam3_dir), *opts)


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_each_phrase_gives_the_detections_of_transformers_pipeline(sam3_dir):
    """Per phrase, the instances equal Sam3Processor + Sam3Model +
    post_process_instance_segmentation on the same image (one class: no cross-class step)."""
    from transformers import AutoTokenizer, Sam3Model, Sam3Processor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    model = Sam3Model.from_pretrained(sam3_dir).eval()
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": SAM3_SIZE,
                                                                       "width": SAM3_SIZE}),
                              tokenizer=AutoTokenizer.from_pretrained(sam3_dir))
    bgr = image(90, 130)
    for phrase in ["duck", "rubber duck"]:
        predictor = load_predictor(text_cfg(sam3_dir, "MODEL.TEXT_PROMPT.CLASSES", f"['{phrase}']",
                                            "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.2"))
        ours = predictor(bgr)["instances"]
        inputs = processor(images=bgr[:, :, ::-1].copy(), text=phrase, return_tensors="pt")
        with torch.no_grad():
            reference = processor.post_process_instance_segmentation(
                model(**inputs), threshold=0.2, mask_threshold=0.5, target_sizes=[(90, 130)])[0]
        order = reference["scores"].argsort(descending=True)
        assert len(ours) == len(order) > 0
        torch.testing.assert_close(ours.scores, reference["scores"][order], atol=1e-5, rtol=0)
        assert torch.equal(ours.pred_masks, reference["masks"][order].bool())
        assert set(ours.pred_classes.tolist()) == {0}


def test_instances_at_any_image_size(sam3_dir):
    predictor = load_predictor(text_cfg(sam3_dir, "MODEL.TEXT_PROMPT.CLASSES", "['duck', 'panda']",
                                        "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0"))
    for h, w in [(1, 1), (1, 4000), (4000, 1), (17, 23), (20, 1500), (3000, 4000)]:
        inst = predictor(image(h, w))["instances"]
        assert inst.image_size == (h, w) and len(inst) > 0
        assert inst.pred_masks.shape == (len(inst), h, w) and inst.pred_masks.dtype == torch.bool
        assert inst.pred_boxes.tensor.shape == (len(inst), 4)
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert set(inst.pred_classes.tolist()) <= {0, 1}
    # the boxes are the masks' boxes (checked on the first mask that has pixels)
    (with_pixels, *_) = inst.pred_masks.flatten(1).any(1).nonzero().flatten().tolist()
    ys, xs = inst.pred_masks[with_pixels].nonzero(as_tuple=True)
    assert inst.pred_boxes.tensor[with_pixels].tolist() == [xs.min(), ys.min(), xs.max() + 1,
                                                            ys.max() + 1]


def test_the_image_is_encoded_once_and_batched_phrases_equal_one_at_a_time(sam3_dir):
    classes = "['duck', 'panda', 'dice', 'star', 'square']"
    batched = load_predictor(text_cfg(sam3_dir, "MODEL.TEXT_PROMPT.CLASSES", classes,
                                      "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0",
                                      "MODEL.TEXT_PROMPT.PHRASES_PER_BATCH", "2"))
    single = load_predictor(text_cfg(sam3_dir, "MODEL.TEXT_PROMPT.CLASSES", classes,
                                     "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0",
                                     "MODEL.TEXT_PROMPT.PHRASES_PER_BATCH", "1"))
    calls = []
    batched.model.sam3.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    text_calls = []
    batched.model.sam3.text_encoder.register_forward_hook(lambda *a: text_calls.append(1))
    for seed in range(2):
        a = batched(image(70, 90, seed))["instances"]
        b = single(image(70, 90, seed))["instances"]
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_masks, b.pred_masks)
    assert len(calls) == 2  # one vision pass per image, whatever the number of phrases
    assert len(text_calls) == 1  # the phrases' text features are computed once


def test_classes_are_the_test_datasets_ids(sam3_dir, synthetic_root, tmp_path):
    cfg = setup_cfg(os.path.join(CONFIGS, "sam3_text.yaml"), tiny_opts(synthetic_root, tmp_path) + [
        *sam3_opts(sam3_dir), "DATASETS.TEST", "('d2ext_synthetic_val',)", "MODEL.DEVICE", "cpu",
        "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0"])
    DatasetCatalog.get("d2ext_synthetic_val")
    dataset_classes = MetadataCatalog.get("d2ext_synthetic_val").thing_classes
    picked = [dataset_classes[2], dataset_classes[0]]
    cfg.defrost()
    cfg.MODEL.TEXT_PROMPT.CLASSES = picked
    model = load_predictor(cfg).model
    assert model.class_names == dataset_classes and model.phrases == picked
    out = model([{"image": torch.from_numpy(image(64, 64)).permute(2, 0, 1)}])[0]["instances"]
    assert set(out.pred_classes.tolist()) <= {0, 2}
    cfg.MODEL.TEXT_PROMPT.CLASSES = ["giraffe"]
    with pytest.raises(TextPromptError, match=r"\['giraffe'\] are not classes of the test"):
        load_predictor(cfg)


def test_eval_only_gives_coco_mask_ap(sam3_dir, synthetic_root, tmp_path):
    from d2ext.cli import train_net

    args = train_net.argument_parser().parse_args(
        ["--config-file", os.path.join(CONFIGS, "sam3_text.yaml"), "--eval-only",
         *tiny_opts(synthetic_root, tmp_path), *sam3_opts(sam3_dir),
         "DATASETS.TEST", "('d2ext_synthetic_val',)",
         "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "0",
         "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0"])
    results = train_net.main(args)
    assert {"AP", "AP50", "AP75"} <= set(results["segm"])
    assert all(is_score(results["segm"][k]) for k in ("AP", "AP50", "AP75"))


def test_bad_input_gets_named_errors_and_an_empty_result(sam3_dir, tmp_path):
    with pytest.raises(TextPromptError, match="no classes to find"):
        load_predictor(text_cfg(sam3_dir))
    long_phrase = " ".join(["rubber duck"] * 20)
    with pytest.raises(TextPromptError, match=r"longer than SAM 3's text context of 32 tokens"):
        load_predictor(text_cfg(sam3_dir, "MODEL.TEXT_PROMPT.CLASSES", f"['{long_phrase}']"))
    with pytest.raises(TextPromptError, match="holds no SAM 3 model"):
        load_predictor(text_cfg(str(tmp_path), "MODEL.TEXT_PROMPT.CLASSES", "['duck']"))
    nothing = load_predictor(text_cfg(sam3_dir, "MODEL.TEXT_PROMPT.CLASSES", "['duck']",
                                      "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "1.0"))
    out = nothing(image(40, 50))["instances"]
    assert len(out) == 0 and out.pred_masks.shape == (0, 40, 50) and out.image_size == (40, 50)


def test_offline_hub_id_says_gated_and_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    from d2ext.modeling.text_prompt import load_sam3

    with pytest.raises(TextPromptError) as err:
        load_sam3("facebook/sam3")
    for needle in ("facebook/sam3", "gated", "HF_HUB_OFFLINE=1", "hf download",
                   "MODEL.TEXT_PROMPT.WEIGHTS"):
        assert needle in str(err.value)


def test_demo_finds_the_classes_typed_and_refuses_unknown_ones(sam3_dir, tmp_path, caplog):
    import logging

    from PIL import Image

    from d2ext.cli import demo

    Image.fromarray(image(60, 80)).save(tmp_path / "img.png")
    common = ["--config-file", os.path.join(CONFIGS, "sam3_text.yaml"), "--input",
              str(tmp_path / "img.png"), "--confidence-threshold", "0"]
    opts = ["--opts", *sam3_opts(sam3_dir), "MODEL.DEVICE", "cpu",
            "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0"]
    out = tmp_path / "drawn.png"
    assert demo.main(common + ["--output", str(out), "--classes", "duck", "panda"] + opts) == 0
    with Image.open(out) as drawn:
        assert drawn.size == (80, 60)
    fixed = opts + ["MODEL.TEXT_PROMPT.CLASSES", "['duck', 'dice']", "DATASETS.TEST", "()"]
    logger = logging.getLogger("d2ext")  # the demo's logger does not propagate to caplog's
    logger.addHandler(caplog.handler)
    try:
        assert demo.main(common + ["--classes", "panda"] + fixed) == 2
        assert "--classes ['panda']" in caplog.text and "['duck', 'dice']" in caplog.text
        assert demo.main(common + ["--classes", "dice"] + fixed) == 0
        assert demo.main(["--config-file", os.path.join(CONFIGS, "quickstart.yaml"), "--input",
                          str(tmp_path / "img.png"), "--classes", "duck"]) == 2
        assert "--classes applies to text-prompt configs" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
