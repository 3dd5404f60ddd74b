"""The SAM-prompt meta-architecture (DinoSamPrompt) on tiny random DINO + SAM models."""
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from d2ext.engine import setup_cfg
from d2ext.modeling.mask_ops import mask_nms
from d2ext.modeling.sam_prompt import (
    PrototypeError,
    SamCheckpointError,
    build_sam_model,
    decode_prompts,
)
from d2ext.modeling.sam_prompt.prompts import Prompts, prototype_prompts
from d2ext.modeling.sam_prompt.prototypes import collect_references

from helpers import (
    CONFIGS,
    SCENE_SIZE,
    as_input,
    is_score,
    tiny_dino_sam,
    tiny_sam_prompt_model,
    two_texture_scene,
    write_sam_references,
)


@pytest.fixture(scope="module")
def modules():
    return tiny_dino_sam()


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return write_sam_references(tmp_path_factory.mktemp("references"))


@pytest.mark.parametrize("method", ["clustering", "attention", "prototypes", "grid"])
def test_each_method_returns_consistent_instances_with_sorted_scores(modules, references,
                                                                     method):
    model = tiny_sam_prompt_model(*modules, method=method, num_segments=6, points_per_side=4,
                                  references=references, class_names=["warm", "cool"],
                                  min_similarity=-1, dedup_iou=1.0, score_threshold=-1.0)
    scene, _ = two_texture_scene(vertical=True)
    record = as_input(scene)
    record.update(height=96, width=80)  # outputs come at the requested size
    prompts = model.make_prompts(record["image"])[0] if method != "prototypes" else None
    instances = model([record])[0]["instances"]
    n = len(instances)
    assert n > 1 and instances.image_size == (96, 80)
    assert instances.pred_masks.shape == (n, 96, 80) and instances.pred_masks.dtype == torch.bool
    assert instances.pred_boxes.tensor.shape == (n, 4) and instances.pred_classes.shape == (n,)
    assert torch.all(instances.scores[:-1] >= instances.scores[1:])
    assert instances.pred_masks.flatten(1).any(1).all()  # empty masks are dropped
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 96).all()
    if method == "prototypes":
        assert set(instances.pred_classes.tolist()) <= {0, 1}
    else:
        assert (instances.pred_classes == 0).all() and model.class_names == ["object"]
        if method == "clustering":  # one point and one box per connected region of a cluster
            assert len(prompts) >= 2 and prompts.boxes.shape == (len(prompts), 4)
            xy = prompts.points[:, 0]
            assert ((prompts.boxes[:, :2] <= xy) & (xy <= prompts.boxes[:, 2:])).all()
        else:
            assert len(prompts) == {"attention": 6, "grid": 16}[method]
        assert (prompts.points >= 0).all() and (prompts.points[..., 0] < SCENE_SIZE).all()


def test_prototypes_from_one_reference_label_two_textures(modules, references):
    model = tiny_sam_prompt_model(*modules, method="prototypes", references=references,
                                  class_names=["warm", "cool"], min_similarity=-1)
    prototypes = model.compute_prototypes()
    assert prototypes.shape[0] == 2 and model.prototype_classes.tolist() == [0, 1]
    scene, warm = two_texture_scene(vertical=True)  # the reference is split top / bottom
    features, _ = model.dino_features(as_input(scene)["image"])
    prompts, similarity = prototype_prompts(features, prototypes, scene.shape[:2], -1.0)
    # Every cell of each half goes to its texture's prototype: one region, one prompt per half.
    assert similarity.argmax(0)[:, :4].eq(0).all() and similarity.argmax(0)[:, 4:].eq(1).all()
    assert sorted(prompts.classes.tolist()) == [0, 1]
    for point, box, cls in zip(prompts.points[:, 0], prompts.boxes, prompts.classes):
        x, y = point.long().tolist()
        assert warm[y, x] == (cls == 0)
        expected = [0, 0, 64, 128] if cls == 0 else [64, 0, 128, 128]
        assert box.tolist() == expected


def test_dedup_removes_injected_duplicate(modules):
    masks = torch.zeros(4, 20, 20, dtype=torch.bool)
    masks[0, :10], masks[1, 10:], masks[2, :, :5] = True, True, True
    masks[3] = masks[0]
    masks[3, 0, 0] = False  # a near copy of mask 0 with a lower score
    keep = mask_nms(masks, torch.tensor([0.9, 0.5, 0.7, 0.8]), iou_threshold=0.7)
    assert keep.tolist() == [0, 2, 1]

    model = tiny_sam_prompt_model(*modules, method="grid", points_per_side=3, score_threshold=-1.0)
    record = as_input(two_texture_scene(vertical=True)[0])
    single = model([record])[0]["instances"]
    grid = model.make_prompts(record["image"])[0]
    model.make_prompts = lambda image: (Prompts(points=torch.cat([grid.points, grid.points]),
                                                labels=torch.cat([grid.labels, grid.labels])),
                                        None)
    doubled = model([record])[0]["instances"]
    assert len(doubled) == len(single) > 0
    assert torch.equal(doubled.pred_masks, single.pred_masks)


def test_batched_decoding_equals_one_prompt_at_a_time(modules):
    _, sam = modules
    torch.manual_seed(1)
    embedding = sam.image_encoder(torch.randn(1, 3, SCENE_SIZE, SCENE_SIZE))
    points = torch.rand(7, 2, 2) * SCENE_SIZE
    labels = torch.tensor([[1.0, 0.0]]).repeat(7, 1)
    boxes = torch.sort(torch.rand(7, 2, 2) * SCENE_SIZE, dim=1).values.reshape(7, 4)
    for box in (None, boxes):
        batched = decode_prompts(sam, embedding, points, labels, box, batch_size=64)
        single = decode_prompts(sam, embedding, points, labels, box, batch_size=1)
        # SAM's own MaskDecoder, one prompt per call: the reference for d2ext's rearrangement
        reference = decode_prompts(sam, embedding, points, labels, box, batch_size=1,
                                   shared_image=False)
        uneven = decode_prompts(sam, embedding, points, labels, box, batch_size=3)
        for result in (batched, single, uneven):
            assert torch.allclose(result[0], reference[0], atol=1e-4)
            assert torch.allclose(result[1], reference[1], atol=1e-5)
            assert torch.equal(result[0] > 0, reference[0] > 0)
        # Only the grid cells over a (h, w) image inside SAM's square: the same logits there.
        g = embedding.shape[-1]
        h, w = SCENE_SIZE // 2 + 1, SCENE_SIZE  # rows: one more pixel than half the square
        cropped = decode_prompts(sam, embedding, points, labels, box, image_size=(h, w))
        rows = 4 * (g // 2 + 1)
        assert cropped[0].shape == (7, rows, 4 * g)
        assert torch.allclose(cropped[0], reference[0][:, :rows], atol=1e-4)
        assert torch.allclose(cropped[1], reference[1], atol=1e-5)


def test_no_surviving_prompt_gives_empty_instances(modules, references):
    model = tiny_sam_prompt_model(*modules, method="prototypes", references=references,
                                  class_names=["warm", "cool"],
                                  min_similarity=1.5)  # nothing that similar
    instances = model([dict(as_input(two_texture_scene(True)[0]), height=50, width=60)])[0][
        "instances"]
    assert len(instances) == 0 and instances.image_size == (50, 60)
    assert instances.pred_masks.shape == (0, 50, 60)
    model = tiny_sam_prompt_model(*modules, method="grid", points_per_side=2, score_threshold=2.0)
    assert len(model([as_input(two_texture_scene(True)[0])])[0]["instances"]) == 0


def test_missing_or_wrong_sam_checkpoint_names_file_type_and_source(tmp_path):
    missing = str(tmp_path / "sam_vit_l.pth")
    with pytest.raises(SamCheckpointError, match="sam_vit_l.pth") as err:
        build_sam_model("vit_l", missing)
    assert "vit_l" in str(err.value) and "segment-anything" in str(err.value)

    tiny = str(tmp_path / "tiny.pth")
    torch.save(build_sam_model("tiny").state_dict(), tiny)
    reloaded = build_sam_model("tiny", tiny)  # the right type loads
    with pytest.raises(SamCheckpointError) as err:
        build_sam_model("vit_b", tiny)
    message = str(err.value)
    assert "tiny.pth" in message and "vit_b" in message and "segment-anything" in message
    assert reloaded.image_encoder.img_size == 128


def test_prototype_dataset_without_masks_or_class_names_the_class():
    def records(with_masks):
        square = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
        return [{"file_name": "unused.png", "height": 40, "width": 40, "image_id": 1,
                 "annotations": [dict(category_id=0, bbox=[10, 10, 20, 20], bbox_mode=1,
                                      **({"segmentation": square} if with_masks else {}))]}]

    for name, with_masks in [("sam_test_no_masks", False), ("sam_test_lacks_cat", True)]:
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda w=with_masks: records(w))
            MetadataCatalog.get(name).set(thing_classes=["dog", "cat"])
    with pytest.raises(PrototypeError, match="'dog'.*sam_test_no_masks"):
        collect_references("sam_test_no_masks", shots=2)
    with pytest.raises(PrototypeError, match="'cat'.*sam_test_lacks_cat"):
        collect_references("sam_test_lacks_cat", shots=2)
    refs, names = collect_references("sam_test_lacks_cat", 2, class_names=["dog"])
    # A restricted class list works: the dog's mask becomes the one reference, class 0.
    assert names == ["dog"] and len(refs) == 1
    assert refs[0].class_index == 0 and (refs[0].height, refs[0].width) == (40, 40)
    assert refs[0].segmentation == [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    with pytest.raises(PrototypeError, match="'horse'"):
        collect_references("sam_test_lacks_cat", 2, class_names=["horse"])


def test_eval_only_with_coco_evaluator_returns_ap(synthetic_root, tmp_path, load_tool):
    train_net = load_tool("train_net")
    args = train_net.argument_parser().parse_args([
        "--config-file", os.path.join(CONFIGS, "sam_tiny.yaml"), "--eval-only",
        "DATASETS.SYNTHETIC.ROOT", synthetic_root, "DATASETS.SYNTHETIC.NUM_VAL", "3",
        "DATASETS.SYNTHETIC.IMAGE_SIZE", "128", "OUTPUT_DIR", str(tmp_path),
        "MODEL.SAM_PROMPT.METHOD", "prototypes", "MODEL.SAM_PROMPT.PROTOTYPE_DATASET",
        "d2ext_synthetic_val", "MODEL.SAM_PROMPT.PROTOTYPE_SHOTS", "1",
        "MODEL.SAM_PROMPT.PROTOTYPE_MIN_SIMILARITY", "-1.0",
        # random tiny weights: keep every non-empty mask, and seed them so masks exist
        "MODEL.SAM_PROMPT.SCORE_THRESHOLD", "-1.0", "SEED", "1"])
    results = train_net.main(args)  # one test dataset: detectron2 returns its results flat
    assert {"AP", "AP50", "AP75"} <= set(results["segm"]) and "AP" in results["bbox"]
    assert all(is_score(results["segm"][k]) for k in ("AP", "AP50", "AP75"))
    assert is_score(results["bbox"]["AP"])


def test_demo_maps_method_and_segments_to_the_config(synthetic_root, tmp_path, load_tool):
    demo = load_tool("demo")
    image = tmp_path / "scene.png"
    from PIL import Image
    Image.fromarray(two_texture_scene(True)[0]).save(image)
    common = ["--config-file", os.path.join(CONFIGS, "sam_tiny.yaml"), "--input", str(image),
              "--opts", "DATASETS.SYNTHETIC.ROOT", synthetic_root]
    assert demo.main(common[:4] + ["--output", str(tmp_path / "drawn.png"), "--method",
                                   "clustering", "--num-segments", "3"] + common[4:]) == 0
    assert os.path.getsize(tmp_path / "drawn.png") > 0
    args = demo.argument_parser().parse_args(["--method", "attention", "--num-segments", "3"])
    cfg = setup_cfg(os.path.join(CONFIGS, "sam_tiny.yaml"),
                    ["DATASETS.SYNTHETIC.ROOT", synthetic_root])
    cfg.merge_from_list(demo.sam_prompt_opts(cfg, args))
    model = build_model(cfg)
    assert (model.method, model.num_segments) == ("attention", 3)
    # other meta-architectures reject the SAM-only flags instead of ignoring them
    assert demo.main(["--config-file", os.path.join(CONFIGS, "quickstart.yaml"), "--input",
                      str(image), "--method", "grid"]) == 2


@pytest.mark.parametrize("arch", ["dinov3_tiny16", "dinov2_tiny14_reg"])
def test_cls_attention_saliency_equals_the_models_attention_weights(arch):
    from d2ext.modeling.backbone import DinoViTBackbone
    from d2ext.modeling.sam_prompt.prompts import (
        capture_last_attention_input,
        cls_attention_saliency,
    )

    torch.manual_seed(0)
    backbone = DinoViTBackbone(arch)
    backbone.vit.set_attn_implementation("eager")  # the only mode that returns weights
    pixels = torch.randn(1, 3, 6 * backbone.arch.patch, 7 * backbone.arch.patch)
    with torch.no_grad(), capture_last_attention_input(backbone) as captured:
        attentions = backbone.vit(pixel_values=pixels, output_attentions=True).attentions
    expected = attentions[-1][0, :, 0, backbone.arch.num_prefix_tokens:].mean(0).view(6, 7)
    assert torch.allclose(cls_attention_saliency(backbone, captured, (6, 7)), expected, atol=1e-6)
