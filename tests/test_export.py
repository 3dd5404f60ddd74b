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
from d2ext.export.exporter import (build_graph, check_exportable, difference_from_eager,
                                   example_inputs, fixed_size_reason, size_multiple)

from conftest import CONFIGS, REPO, run_tool


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
CASES = [  # config, format, overrides; slow: over ~10 s (ONNX conversions, two exports)
    pytest.param("quickstart_eomt", "torch_export", [], id="eomt-torch_export"),
    pytest.param("quickstart_eomt", "onnx", [], id="eomt-onnx"),
    pytest.param("quickstart_eomt", "torch_export", DINOV2, id="eomt-dinov2-torch_export"),
    pytest.param("quickstart_mask2former", "torch_export", ONE_LAYER_EACH,
                 id="mask2former-torch_export"),
    pytest.param("quickstart_mask2former", "onnx", ONE_LAYER_EACH, id="mask2former-onnx",
                 marks=pytest.mark.slow),
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


@pytest.mark.slow
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


def test_tool_refuses_the_sam_prompt_config_in_one_line(tmp_path):
    result = run_tool("tools/export_model.py", "--config-file", "configs/sam_tiny.yaml",
                      "--format", "onnx", "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "export_model: MODEL.META_ARCHITECTURE='DinoSamPrompt' cannot be exported (its prompts "
        "are chosen per image in Python loops); exportable: EoMT, DinoMask2Former, "
        "DinoSemanticSegmentor, GeneralizedRCNN."]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tool_export_runs_with_the_readme_code_without_detectron2(tmp_path):
    """tools/export_model.py writes a checked ONNX file; README's onnxruntime + numpy code runs
    it with neither detectron2 nor d2ext importable, preparing the input d2ext's runtime
    prepares and getting its outputs."""
    export_dir = tmp_path / "exported"
    result = run_tool("tools/export_model.py", "--config-file", "configs/quickstart_eomt.yaml",
                      "--format", "onnx", "--output", str(export_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().rsplit(": ", 1)[1]) <= 1e-4  # its check against eager
    spec = json.loads((export_dir / "export.json").read_text())
    assert spec["size"] is None and spec["onnx_opset"] >= 16  # GridSample

    readme = open(f"{REPO}/README.md").read()
    section = readme[readme.index("## Deployment"):]
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
