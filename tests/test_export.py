"""Export to ONNX and torch.export: each head's graph equals the eager model, and the runtime's
post-processing gives the eager model's Instances and sem_seg; configs that cannot be exported
are refused by name."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from d2ext.engine import load_predictor, setup_cfg
from d2ext.export import ExportedModel, ExportedPredictor, ExportError, export_model
from d2ext.export.exporter import (
    build_graph,
    check_exportable,
    difference_from_eager,
    example_inputs,
    fixed_size_reason,
    size_multiple,
)

from helpers import CONFIGS, REPO, run_tool

# Mask-classification configs output sem_seg too, so both post-processings are compared.
BOTH_OUTPUTS = ["MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True"]
DINOV2 = ["MODEL.DINO.ARCH", "dinov2_tiny14_reg"]
# A score threshold at which the tiny Mask R-CNN's detection count differs between images: a
# count the trace kept as a constant would fail.
VARYING_DETECTIONS = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.25", "TEST.DETECTIONS_PER_IMAGE",
                      "100"]
# Mask R-CNN on the tiny ConvNeXt (detectron2's FPN): its trace takes any size.
CONVNEXT_MASK_RCNN = ["MODEL.DINO.ARCH", "dinov3_convnext_test", "MODEL.DINO.WEIGHTS", "",
                      "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "256",
                      "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
                      "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "INPUT.MIN_SIZE_TEST", "192",
                      "INPUT.MAX_SIZE_TEST", "256", *VARYING_DETECTIONS]
# The Mask2Former-style quickstart with one layer of each kind (deformable encoder, masked
# decoder): every operator, a smaller graph to export.
ONE_LAYER_EACH = ["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS",
                  "2"]
CASES = [  # config, format, overrides
    pytest.param("quickstart_eomt", "torch_export", [], id="eomt-torch_export"),
    pytest.param("quickstart_eomt", "onnx", [], id="eomt-onnx"),
    pytest.param("quickstart_eomt", "torch_export", DINOV2, id="eomt-dinov2-torch_export"),
    pytest.param("quickstart_mask2former", "torch_export", ONE_LAYER_EACH,
                 id="mask2former-torch_export"),
    pytest.param("quickstart_mask2former", "onnx", ONE_LAYER_EACH, id="mask2former-onnx"),
    pytest.param("quickstart_semseg", "torch_export", [], id="semseg-torch_export"),
    pytest.param("quickstart_semseg", "onnx", [], id="semseg-onnx"),
    pytest.param("quickstart", "onnx", VARYING_DETECTIONS, id="maskrcnn-onnx"),
    pytest.param("dinov3_convnext_maskrcnn", "onnx", CONVNEXT_MASK_RCNN,
                 id="maskrcnn-convnext-dynamic-onnx"),
]


def perturbed_model(config, opts=()):
    """``config``'s model (eval mode, CPU) with random weights moved off their initial values
    (zero and near-zero inits, e.g. the deformable attention's weights, would hide a wrong
    graph)."""
    cfg = setup_cfg(f"{CONFIGS}/{config}.yaml", ["MODEL.DEVICE", "cpu", *BOTH_OUTPUTS, *opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return cfg, model


def padded_sizes(multiple):
    """Two padded sizes (H, W) near the tiny configs' test size, multiples of ``multiple``."""
    return [tuple(math.ceil(s / multiple) * multiple for s in size)
            for size in ((192, 256), (160, 224))]


def assert_same_outputs(eager, exported):
    """The output dicts of one image agree: sem_seg within 1e-4; the same instances with
    classes equal, scores and boxes within 1e-4 and masks equal but for pixels whose logit is
    within rounding of the threshold."""
    assert eager.keys() == exported.keys()
    if "sem_seg" in eager:
        assert (eager["sem_seg"] - exported["sem_seg"]).abs().max() <= 1e-4
    if "instances" in eager:
        a, b = eager["instances"], exported["instances"]
        assert a.image_size == b.image_size and len(a) == len(b) > 0
        assert a.get_fields().keys() == b.get_fields().keys()
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert (a.scores - b.scores).abs().max() <= 1e-4
        assert (a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max() <= 1e-4
        assert (a.pred_masks != b.pred_masks).float().mean() <= 1e-5


@pytest.mark.parametrize("config, fmt, opts", CASES)
def test_export_equals_eager_at_two_sizes(config, fmt, opts, tmp_path):
    cfg, model = perturbed_model(config, opts)
    multiple = size_multiple(model)
    sizes = padded_sizes(multiple)
    # A dynamic export is traced at another size than both it is checked at.
    exports = {None: sizes} if fixed_size_reason(cfg, fmt) is None else \
        {size: [size] for size in sizes}
    graph, input_names, output_names = build_graph(model, cfg)
    for export_size, check_sizes in exports.items():
        out = tmp_path / f"{fmt}_{export_size}"
        spec = export_model(model, cfg, str(out), fmt, export_size)
        assert (out / spec["file"]).is_file() and spec["outputs"] == output_names
        exported = ExportedModel(str(out))
        for size in check_sizes:
            inputs = example_inputs(input_names, size)
            with torch.no_grad():
                want = graph(*inputs)
            want = [want] if isinstance(want, torch.Tensor) else want
            got = exported.run(*inputs)
            for name, a, b in zip(output_names, want, got):
                assert a.shape == b.shape, name
                assert (a.float() - b.float()).abs().max() <= 1e-4, name
            # An image a little smaller than the padded size, drawn at another output size.
            image = torch.randint(0, 256, (3, size[0] - 5, size[1] - 3),
                                  generator=torch.Generator().manual_seed(1)).float()
            inputs = [{"image": image, "height": 2 * size[0] - 1, "width": size[1] + 7}]
            with torch.no_grad():
                eager = model(inputs)[0]
            assert_same_outputs(eager, exported(inputs)[0])


def test_eomt_at_vit_s_shape_in_onnx_runtime_equals_eager(tmp_path):
    """The deployment case: EoMT on DINOv3 ViT-S/16 (200 queries, 80 classes), trained state,
    one dynamic ONNX export checked at 640 x 640 and 480 x 640."""
    cfg, model = perturbed_model("dinov3_eomt_small", ["MODEL.DINO.WEIGHTS", "",
                                                       "INPUT.MAX_SIZE_TEST", "640"])
    model.attn_mask_probs.zero_()
    export_model(model, cfg, str(tmp_path), "onnx")
    exported = ExportedModel(str(tmp_path))
    graph = build_graph(model, cfg)[0]
    for size in ((640, 640), (480, 640)):
        (images,) = example_inputs(["images"], size)
        with torch.no_grad():
            want = graph(images)
        for a, b in zip(want, exported.run(images)):
            assert (a - b).abs().max() <= 1e-4
        image = torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(1))
        inputs = [{"image": image.float()}]
        with torch.no_grad():
            eager = model(inputs)[0]
        assert_same_outputs(eager, exported(inputs)[0])


def test_exported_predictor_equals_default_predictor(tmp_path):
    """A BGR photo through ExportedPredictor gives what load_predictor's DefaultPredictor
    gives: the same channel order, test-time resize, padding and post-processing."""
    cfg, model = perturbed_model("quickstart_eomt")
    predictor = load_predictor(cfg)
    predictor.model = model
    export_model(model, cfg, str(tmp_path), "torch_export")
    photo = np.random.default_rng(0).integers(0, 256, (150, 190, 3), np.uint8)
    with torch.no_grad():
        eager = predictor(photo)
    exported = ExportedPredictor(str(tmp_path))(photo)
    assert exported["instances"].image_size == (150, 190)
    assert_same_outputs(eager, exported)


@pytest.mark.parametrize("config, opts", [("quickstart_eomt", []),
                                          ("quickstart_mask2former", ONE_LAYER_EACH)])
def test_opset_23_export_uses_fused_attention_and_equals_eager(config, opts, tmp_path):
    """--opset 23: the ViT's attentions become ONNX Attention nodes; outputs still equal eager
    at two sizes of one dynamic export."""
    import onnx

    cfg, model = perturbed_model(config, opts)
    spec = export_model(model, cfg, str(tmp_path), "onnx", opset=23)
    graph = onnx.load(str(tmp_path / spec["file"]), load_external_data=False).graph
    attention = sum(node.op_type == "Attention" for node in graph.node)
    vit = getattr(model.backbone, "net", model.backbone).vit
    assert spec["onnx_opset"] == 23 and attention >= vit.config.num_hidden_layers
    assert difference_from_eager(model, cfg, str(tmp_path), padded_sizes(32)) <= 1e-4


def test_fixed_size_export_refuses_a_larger_image(tmp_path):
    cfg, model = perturbed_model("quickstart_semseg")
    export_model(model, cfg, str(tmp_path), "torch_export", (64, 96))
    exported = ExportedModel(str(tmp_path))
    assert exported([{"image": torch.zeros(3, 60, 90)}])[0]["sem_seg"].shape == (5, 60, 90)
    with pytest.raises(ValueError, match="does not fit this export's fixed size 64x96"):
        exported([{"image": torch.zeros(3, 70, 90)}])


def test_what_cannot_export_is_refused_with_the_reason():
    def refusal(config, fmt, dynamic, opts=(), opset=18):
        cfg = setup_cfg(f"{CONFIGS}/{config}.yaml", list(opts))
        with pytest.raises(ExportError) as err:
            check_exportable(cfg, fmt, dynamic, opset)
        return str(err.value)

    assert "DinoSamPrompt" in refusal("sam_tiny", "onnx", False)
    assert "TextPromptSegmentor" in refusal("sam3_text", "torch_export", False)
    assert "--format onnx" in refusal("quickstart", "torch_export", False)
    assert "DINOv2" in refusal("quickstart_eomt", "onnx", True, DINOV2)
    assert "--size H W" in refusal("quickstart_semseg", "torch_export", True, DINOV2)
    assert "--format onnx is dynamic" in refusal("quickstart_mask2former", "torch_export", True)
    cfg, model = perturbed_model("quickstart_eomt")
    model.attn_mask_probs.copy_(torch.tensor([0.0, 0.5]))  # mid-annealing: random masks
    with pytest.raises(ExportError, match="between 0 and 1"):
        build_graph(model, cfg)
    with pytest.raises(ExportError, match="multiple of 16"):
        export_model(model, cfg, "unused", "onnx", (100, 128))
    assert "choose 18 to 23" in refusal("quickstart_eomt", "onnx", True, opset=17)
    assert "--opset 20 or lower" in refusal("quickstart", "onnx", False, opset=23)


@pytest.mark.slow
def test_tool_refuses_the_sam_prompt_config_in_one_line(tmp_path):
    result = run_tool("tools/export_model.py", "--config-file", "configs/sam_tiny.yaml",
                      "--format", "onnx", "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "export_model: MODEL.META_ARCHITECTURE='DinoSamPrompt' cannot be exported (its prompts "
        "are chosen per image in Python loops); exportable: DinoMask2Former, "
        "DinoSemanticSegmentor, EoMT, GeneralizedRCNN."]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tool_export_runs_with_the_readme_code_without_detectron2(tmp_path):
    """tools/export_model.py writes a checked ONNX file; docs/deployment.md's onnxruntime +
    numpy code runs it with neither detectron2 nor d2ext importable, preparing the input d2ext's
    runtime prepares and getting its outputs."""
    export_dir = tmp_path / "exported"
    result = run_tool("tools/export_model.py", "--config-file", "configs/quickstart_eomt.yaml",
                      "--format", "onnx", "--output", str(export_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().rsplit(": ", 1)[1]) <= 1e-4  # its check against eager
    spec = json.loads((export_dir / "export.json").read_text())
    assert spec["size"] is None and spec["onnx_opset"] >= 16  # GridSample

    readme = open(f"{REPO}/docs/deployment.md").read()
    section = readme[readme.index("# Deployment"):]
    start = section.index("```python\n") + len("```python\n")
    snippet = section[start:section.index("```", start)]
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 190, 3), np.uint8)).save(photo)
    code = ("import sys\nsys.modules['detectron2'] = sys.modules['d2ext'] = None\n"
            + snippet.replace("exported/eomt_s", str(export_dir)).replace("photo.jpg", str(photo))
            + "np.save('x.npy', x)\nnp.save('pred_logits.npy', pred_logits)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]

    predictor = ExportedPredictor(str(export_dir))
    rgb = np.asarray(Image.open(photo))
    image = predictor.aug.get_transform(rgb).apply_image(rgb)
    x = predictor.model.preprocess(torch.as_tensor(image.astype("float32").transpose(2, 0, 1)))
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), x.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "pred_logits.npy"),
                               predictor.model.run(x)[0].numpy(), atol=1e-4)


def test_tool_refuses_a_folder_with_files_unless_overwrite(tmp_path, capsys):
    """A user's files in --output stop the export before the model is built, untouched;
    --overwrite writes the export there and leaves the files it does not write."""
    from d2ext.cli import export_model as tool

    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my notes\n")
    (out / "photo.jpg").write_bytes(b"jpeg")
    argv = ["--config-file", f"{CONFIGS}/quickstart_semseg.yaml", "--format", "torch_export",
            "--output", str(out), "MODEL.DEVICE", "cpu"]
    assert tool.main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"export_model: --output {out} is not empty (config.yaml, photo.jpg); choose a new or "
        "empty folder, or pass --overwrite to replace the export's files in it"]
    assert (out / "config.yaml").read_text() == "my notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "photo.jpg"]
    (tmp_path / "file").write_text("")
    assert tool.main([*argv[:5], str(tmp_path / "file"), *argv[6:]]) == 1
    assert "is a file" in capsys.readouterr().err

    assert tool.main(argv + ["--overwrite"]) == 0  # typed after the overrides, as users do
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "export.json", "model.pt2",
                                                     "photo.jpg"]
    assert (out / "photo.jpg").read_bytes() == b"jpeg"
    assert "my notes" not in (out / "config.yaml").read_text()
    assert ExportedModel(str(out)).spec["format"] == "torch_export"


# -- Odd and thin photos: an export pads and post-processes them as the eager model does -------

# An odd size (resized to 165 x 256, padded to 176 x 256) and thin ones whose short side the
# test-time resize leaves under one padding multiple (3 x 256 and 256 x 3).
ODD_AND_THIN_PHOTOS = [(333, 517), (20, 1500), (1500, 20)]


@pytest.fixture(scope="module")
def eomt_onnx(tmp_path_factory):
    """(cfg, eager DefaultPredictor, export folder, ExportedPredictor) of the perturbed
    quickstart EoMT and a dynamic ONNX export of it."""
    cfg, model = perturbed_model("quickstart_eomt")
    predictor = load_predictor(cfg)
    predictor.model = model
    export_dir = tmp_path_factory.mktemp("eomt_onnx")
    export_model(model, cfg, str(export_dir), "onnx")
    return cfg, predictor, export_dir, ExportedPredictor(str(export_dir))


def random_photo(size):
    return np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8)


def assert_same_instances(eager, scores, classes, masks):
    """Eager ``Instances`` and another's (scores, classes, masks), paired by descending score
    (top-k's order is unspecified): the same count and classes, scores within 1e-4, masks equal
    on 99.9% of pixels. Returns each pair's mask IoU."""
    def by_score(s, c, m):
        s, c, m = torch.as_tensor(s).float(), torch.as_tensor(c).long(), torch.as_tensor(m)
        order = torch.argsort(s, descending=True, stable=True)
        return s[order], c[order], m[order].bool()

    (s1, c1, m1), (s2, c2, m2) = by_score(eager.scores, eager.pred_classes, eager.pred_masks), \
        by_score(scores, classes, masks)
    assert len(s1) == len(s2) > 0 and m1.shape == m2.shape
    assert torch.equal(c1, c2)
    assert (s1 - s2).abs().max() <= 1e-4
    assert (m1 == m2).float().mean() >= 0.999
    inter, union = (m1 & m2).flatten(1).sum(1), (m1 | m2).flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter).float())


@pytest.mark.slow
@pytest.mark.parametrize("photo_size", ODD_AND_THIN_PHOTOS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_exported_predictor_equals_eager_at_odd_and_thin_sizes(eomt_onnx, photo_size):
    """ExportedPredictor on a dynamic ONNX export gives eager's instances: a thin image is
    padded to one multiple as eager pads it (two would add zero patches the ViT attends to),
    and an odd size is post-processed by eager's own functions."""
    cfg, predictor, _, exported = eomt_onnx
    assert exported.model.spec["min_side"] == 16  # the ONNX graph passed the one-multiple check
    photo = random_photo(photo_size)
    with torch.no_grad():
        eager = predictor(photo)["instances"]
    got = exported(photo)["instances"]
    assert got.image_size == eager.image_size == photo_size
    assert_same_instances(eager, got.scores, got.pred_classes, got.pred_masks)


def test_torch_export_program_pads_a_thin_image_to_two_multiples(tmp_path):
    """torch.export refuses a side of one multiple (``exporter.dynamic_shapes``): the spec says
    so and ExportedModel pads a thin image to two, the deviation its docstring states; an
    export.json without min_side (written before it existed) pads so too."""
    cfg, model = perturbed_model("quickstart_eomt")
    spec = export_model(model, cfg, str(tmp_path), "torch_export")
    assert spec["min_side"] == 32
    exported = ExportedModel(str(tmp_path))
    assert exported.padded_size((3, 256)) == (32, 256)
    assert exported.padded_size((165, 256)) == (176, 256)  # eager's padding where it fits
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        exported.run(torch.zeros(1, 3, 16, 256))
    del exported.spec["min_side"]
    assert exported.padded_size((256, 3)) == (256, 32)


@pytest.mark.slow
def test_readme_onnxruntime_code_gives_the_eager_instances(eomt_onnx, tmp_path):
    """docs/deployment.md's onnxruntime + numpy code, with neither detectron2 nor d2ext
    importable, gives the eager model's instances at an odd and at thin sizes: the same padding,
    and masks resized once from the padded grid to the photo as d2ext's post-processing does."""
    cfg, predictor, export_dir, _ = eomt_onnx
    readme = open(f"{REPO}/docs/deployment.md").read()
    section = readme[readme.index("# Deployment"):]
    start = section.index("```python\n") + len("```python\n")
    snippet = section[start:section.index("```", start)]
    assert '"photo.jpg"' in snippet and "topk = 100" in snippet
    snippet = snippet.replace("exported/eomt_s", str(export_dir)).replace(
        '"photo.jpg"', "path").replace("topk = 100", f"topk = {cfg.TEST.DETECTIONS_PER_IMAGE}")
    paths = []
    for i, size in enumerate(ODD_AND_THIN_PHOTOS):
        paths.append(str(tmp_path / f"photo{i}.png"))
        Image.fromarray(random_photo(size)).save(paths[-1])
    body = snippet + ("np.savez(f'out{i}.npz', masks=np.array(masks), scores=np.array(scores), "
                      "classes=classes)\n")
    code = ("import sys\nsys.modules['detectron2'] = sys.modules['d2ext'] = None\n"
            f"for i, path in enumerate({paths!r}):\n"
            + "".join(f"    {line}\n" if line else "\n" for line in body.splitlines()))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for i, path in enumerate(paths):
        rgb = np.asarray(Image.open(path))
        with torch.no_grad():
            eager = predictor(rgb[:, :, ::-1])["instances"]
        out = np.load(tmp_path / f"out{i}.npz")
        iou = assert_same_instances(eager, out["scores"], out["classes"], out["masks"])
        assert iou.min() >= 0.99, (ODD_AND_THIN_PHOTOS[i], iou)
