"""One image, every model: end-to-end CPU time of detectron2's Mask R-CNN, transformers' DETR
and RT-DETR, and each d2ext head at DINOv3 ViT-S, in one interleaved run, next to the accuracy
each one's authors published.

  python tools/benchmark_models.py                        # all rows, 640x640, 5 rounds
  python tools/benchmark_models.py --models maskrcnn_r50 eomt --size 128 --reps 1
  python tools/benchmark_models.py --json models.json     # also the figures as JSON

Rows (``--models``; random weights everywhere, nothing is downloaded):
  maskrcnn_r50   detectron2's Mask R-CNN R50-FPN (model zoo mask_rcnn_R_50_FPN_3x.yaml)
  detr           transformers' DetrForSegmentation, the R50 DETR panoptic shape (250 classes)
  rtdetr         transformers' RTDetrForObjectDetection, RT-DETR-R50's default shape (80
                 classes): boxes only, no masks; --size 128 or more (its 300 queries are picked
                 among the encoder's positions)
  dino_maskrcnn  d2ext Mask R-CNN on DINOv3 ViT-S/16 (configs/dinov3_maskrcnn.yaml)
  mask2former    d2ext Mask2Former-style head on DINOv3 ViT-S/16 (configs/dinov3_mask2former.yaml)
  eomt           d2ext EoMT on DINOv3 ViT-S/16 (configs/dinov3_eomt_small.yaml), trained state
                 (masked attention off, as after annealing)
  dino_sam       d2ext DINOv3 ViT-S/16 prompts + SAM ViT-B masks (configs/dinov3_sam.yaml; ViT-B
                 is segment-anything's smallest published SAM); SAM resizes to 1024 itself
  sam3_text      d2ext SAM 3 text prompts (configs/sam3_text.yaml), one phrase: a random SAM 3
                 at its published full size (transformers' default Sam3Config: the detector
                 of the 848M-parameter SAM 3 of its README; its own 1008 x 1008 input): not
                 ViT-S

What one call is (end to end, batch 1, fp32, under ``torch.inference_mode``): the same random
uint8 RGB image of --size x --size in, the model's final outputs out. d2ext and detectron2:
what ``DefaultPredictor`` runs after its resize -- the image is already at --size, so there is
no resize: array -> float tensor (channels in the config's INPUT.FORMAT) -> ``model([{"image",
"height", "width"}])`` -> ``Instances``. transformers: the image processor (rescale, normalise,
pad; its resize off, so every row sees the same --size pixels), the model, and the processor's
post-processing (``post_process_panoptic_segmentation`` for DETR, ``post_process_object_detection``
for RT-DETR). Every score threshold is 0, so that random weights still give each row its
full output (detectron2's 100 detections with masks, every query post-processed) instead of an
accidental early exit. Batch norms (the R50 rows') get their running statistics from one
calibration call on the image (``calibrate_batch_norms``), as training leaves them: with the
initial ones a random ResNet's activations explode and detectron2's RPN keeps a handful of its
1000 proposals, which is not the trained model's work.

Timing: one warm-up call of each row, then --reps rounds in which every row runs once (in a new
random order per round, ``d2ext.utils.timing.interleaved_medians``); each figure is the median.
"x Mask R-CNN" is the row's time over the Mask R-CNN R50-FPN row's. The machine may be shared:
compare ratios from one run only. The SAM 3 row dominates the run's time and memory (its
848M-parameter model is built, saved and loaded once: a few GB). The published column comes
from ``PUBLISHED`` (COCO figures of trained models, on other hardware; none is measured here).
"""
import argparse
import json
import math
import os
import tempfile

import numpy as np
import torch

from ..errors import UserError
from . import parse_args, run_tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VITS = "dinov3_vits16"

# name -> (the model, what one call outputs)
ROWS = {
    "maskrcnn_r50": ("detectron2 Mask R-CNN R50-FPN",
                     "instances: boxes, classes, masks (detector_postprocess)"),
    "detr": ("transformers DetrForSegmentation R50 (panoptic)",
             "panoptic segmentation (post_process_panoptic_segmentation)"),
    "rtdetr": ("transformers RTDetrForObjectDetection R50",
               "boxes only, no masks (post_process_object_detection)"),
    "dino_maskrcnn": ("d2ext Mask R-CNN on DINOv3 ViT-S/16", "instances: boxes, classes, masks"),
    "mask2former": ("d2ext Mask2Former-style head on DINOv3 ViT-S/16",
                    "instances: classes, masks, boxes"),
    "eomt": ("d2ext EoMT on DINOv3 ViT-S/16 (trained state)", "instances: classes, masks, boxes"),
    "dino_sam": ("d2ext DINOv3 ViT-S/16 + SAM ViT-B (random; smallest published SAM)",
                 "class-agnostic instances: masks, boxes"),
    "sam3_text": ("d2ext SAM 3 text prompt, 1 phrase: full-size SAM 3 at 1008², not ViT-S",
                  "instances of the phrase: masks, boxes, scores"),
}

# Published COCO figures of trained models (checked in each source; none measured here). Where
# nothing is published for the row's own model, the nearest published model is named instead.
PUBLISHED = {
    "maskrcnn_r50": dict(
        figure="37.2 mask AP, 41.0 box AP", metric="COCO val2017 instance segmentation",
        source="detectron2 MODEL_ZOO.md, mask_rcnn_R_50_FPN_3x",
        speed="0.043 s/image, batch 1, V100"),
    "detr": dict(
        figure="43.4 PQ (31.1 mask AP, 38.8 box AP)", metric="COCO val panoptic",
        source="facebookresearch/detr README, DETR R50 panoptic",
        speed="not published for the panoptic model (box-only DETR R50: 0.036 s/image, "
              "GPU not named in the README)"),
    "rtdetr": dict(
        figure="53.1 box AP (no masks)", metric="COCO val2017 detection, 640 input",
        source="lyuwenyu/RT-DETR README, RT-DETR-R50",
        speed="108 FPS, T4, TensorRT FP16"),
    "dino_maskrcnn": dict(
        figure="none published at ViT-S; nearest: ViTDet ViT-B (MAE) Mask R-CNN 45.9 mask AP, "
               "51.6 box AP", metric="COCO val2017 instance segmentation",
        source="detectron2 projects/ViTDet/README.md, mask_rcnn_vitdet_b_100ep",
        speed="0.079 s/image (A100)"),
    "mask2former": dict(
        figure="none published at ViT-S; nearest: Mask2Former R50 43.7 mask AP",
        metric="COCO val2017 instance segmentation",
        source="facebookresearch/Mask2Former MODEL_ZOO.md, maskformer2_R50_bs16_50ep",
        speed="not in the model zoo"),
    "eomt": dict(
        figure="32.6 mask AP (LightlyTrain dinov3/vits16-eomt-inst-coco, 640); EoMT-S 2x 640 "
               "DINOv3 47.2 PQ (COCO panoptic)", metric="COCO val instance / panoptic",
        source="LightlyTrain docs, Instance Segmentation benchmark; tue-mps/eomt "
               "model_zoo/dinov3.md",
        speed="19.4 ms, T4, FP16, torch.compile (LightlyTrain); EoMT-S 246 / 570 FPS, "
              "H100, torch.compile default / max-autotune"),
    "dino_sam": dict(
        figure="none published for COCO instances; nearest: Matcher (DINOv2 + SAM, one shot, no "
               "training) 52.7 mIoU, a different task and metric",
        metric="COCO-20i one-shot semantic segmentation",
        source="aim-uofa/Matcher README", speed="not published"),
    "sam3_text": dict(
        figure="48.5 mask AP (LVIS); 56.4 box AP (COCO)",
        metric="LVIS instance segmentation; COCO box detection",
        source="facebookresearch/sam3 README (848M parameters)", speed="not in the README"),
}


def random_image(size, seed=0):
    """The benchmark's image: uint8 RGB (size, size, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _detectron2_call(cfg, model, rgb):
    """``model`` called as ``DefaultPredictor`` calls it on ``rgb``, minus the resize."""
    height, width = rgb.shape[:2]

    def run():
        image = rgb[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else rgb
        tensor = torch.as_tensor(np.ascontiguousarray(image).astype("float32").transpose(2, 0, 1))
        return model([{"image": tensor, "height": height, "width": width}])[0]
    return run


def _d2ext_model(config_file, opts, size):
    """A random-weight model of a d2ext (or detectron2 model zoo) config, in eval mode."""
    from detectron2.modeling import build_model

    from ..engine import setup_cfg

    cfg = setup_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
                                  "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST",
                                  str(size), *opts])
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def save_random_sam3(directory, phrase):
    """A random SAM 3 at transformers' default (published) size with a word tokenizer holding
    ``phrase``, saved as a user's save_pretrained directory."""
    from transformers import Sam3Config, Sam3Model
    from transformers.utils import logging as hf_logging

    from ..modeling.text_prompt import word_tokenizer

    hf_logging.disable_progress_bar()  # its save and load bars would split the printed table
    torch.manual_seed(0)
    model = Sam3Model(Sam3Config())
    model.save_pretrained(directory)
    del model
    word_tokenizer(phrase.split()).save_pretrained(directory)
    return directory


def calibrate_batch_norms(model, run):
    """Set every batch norm's running statistics (detectron2's and transformers' frozen ones,
    ``nn.BatchNorm2d`` in eval mode) to the per-channel mean and variance of its input in one
    call of ``run``, in network order, as training leaves them. Random weights with the initial
    statistics (mean 0, variance 1) let a ResNet's activations grow by orders of magnitude from
    stage to stage; detectron2's RPN then keeps a handful of proposals instead of its 1000 and
    the row does far less work than the trained model. Models without batch norms are left as
    they are."""
    def set_statistics(module, inputs):
        x = inputs[0]
        if x.dim() == 4:
            module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            module.running_var.copy_(x.var(dim=(0, 2, 3)))

    handles = [m.register_forward_pre_hook(set_statistics) for m in model.modules()
               if isinstance(getattr(m, "running_mean", None), torch.Tensor)
               and isinstance(getattr(m, "running_var", None), torch.Tensor)]
    if handles:
        with torch.no_grad():
            run()
    for handle in handles:
        handle.remove()


def build_row(name, size, rgb, tmp):
    """(zero-argument end-to-end call, parameter count) of row ``name``."""
    config = os.path.join(REPO, "configs")
    dino = ["MODEL.DINO.ARCH", VITS, "MODEL.DINO.WEIGHTS", "", "INPUT.IMAGE_SIZE", str(size)]
    if name == "maskrcnn_r50":
        from detectron2 import model_zoo

        cfg, model = _d2ext_model(model_zoo.get_config_file(
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"),
            ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"], size)
    elif name == "dino_maskrcnn":
        cfg, model = _d2ext_model(os.path.join(config, "dinov3_maskrcnn.yaml"),
                                  dino + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"], size)
    elif name == "mask2former":
        cfg, model = _d2ext_model(os.path.join(config, "dinov3_mask2former.yaml"), dino, size)
    elif name == "eomt":
        from ..modeling.meta_arch import capabilities

        cfg, model = _d2ext_model(os.path.join(config, "dinov3_eomt_small.yaml"), dino, size)
        capabilities(model).trained_state(model)
    elif name == "dino_sam":
        cfg, model = _d2ext_model(os.path.join(config, "dinov3_sam.yaml"), dino + [
            "MODEL.SAM_PROMPT.SAM_TYPE", "vit_b", "MODEL.SAM_PROMPT.SAM_CHECKPOINT", "",
            "MODEL.SAM_PROMPT.SCORE_THRESHOLD", "0.0"], size)
    elif name == "sam3_text":
        phrase = "object"
        directory = save_random_sam3(os.path.join(tmp, "sam3"), phrase)
        cfg, model = _d2ext_model(os.path.join(config, "sam3_text.yaml"), [
            "MODEL.TEXT_PROMPT.WEIGHTS", directory, "MODEL.TEXT_PROMPT.CLASSES", str([phrase]),
            "MODEL.TEXT_PROMPT.SCORE_THRESHOLD", "0.0", "DATASETS.TEST", "()"], size)
    elif name in ("detr", "rtdetr"):
        run, model = _transformers_row(name, rgb)
    else:
        raise ValueError(name)
    if name not in ("detr", "rtdetr"):
        run = _detectron2_call(cfg, model, rgb)
    calibrate_batch_norms(model, run)
    return run, sum(p.numel() for p in model.parameters())


def _transformers_row(name, rgb):
    """Image processor + model + post-processing of transformers' DETR (panoptic) or RT-DETR."""
    from transformers import (
        DetrConfig,
        DetrForSegmentation,
        DetrImageProcessor,
        ResNetConfig,
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrImageProcessor,
    )

    torch.manual_seed(0)
    target = [rgb.shape[:2]]
    if name == "detr":
        # DETR R50's backbone as transformers' own ResNet (random weights; timm is not needed);
        # 250 classes as the published COCO panoptic model has.
        backbone = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"])
        model = DetrForSegmentation(DetrConfig(backbone_config=backbone, num_labels=250)).eval()
        processor = DetrImageProcessor(do_resize=False)

        def run():
            inputs = processor(images=rgb, return_tensors="pt")
            return processor.post_process_panoptic_segmentation(
                model(**inputs), threshold=0.0, label_ids_to_fuse=set(), target_sizes=target)[0]
    else:
        model = RTDetrForObjectDetection(RTDetrConfig(num_labels=80)).eval()
        processor = RTDetrImageProcessor(do_resize=False)

        def run():
            inputs = processor(images=rgb, return_tensors="pt")
            return processor.post_process_object_detection(
                model(**inputs), threshold=0.0, target_sizes=target)[0]
    return run, model


def check_rtdetr_size(size):
    """RT-DETR picks its queries among its encoder's positions (strides 8, 16, 32): a small image
    has too few of them, which transformers reports as a bare "index out of range"."""
    from transformers import RTDetrConfig

    config = RTDetrConfig()
    positions = sum(math.ceil(size / stride) ** 2 for stride in config.feat_strides)
    if positions < config.num_queries:
        raise UserError(f"--size {size}: RT-DETR selects {config.num_queries} queries from its "
                        f"encoder's {positions} positions at this size; use --size 128 or more, "
                        "or leave rtdetr out of --models.")


def published_text(name):
    entry = PUBLISHED[name]
    return (f"{entry['figure']}, {entry['metric']} ({entry['source']}; speed: "
            f"{entry['speed']})")


def markdown_table(results, size):
    """The results as a markdown table."""
    base = results.get("maskrcnn_r50", {}).get("ms")
    lines = [f"| model | params | what it outputs | ms ({size}², CPU, batch 1) | img/s | "
             "× Mask R-CNN | published accuracy (source) |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = f"{r['ms'] / base:.2f}" if base else "–"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['outputs']} | "
                     f"{r['ms']:.0f} | {r['images_per_second']:.2f} | {ratio} | "
                     f"{published_text(name)} |")
    return "\n".join(lines)


def _main(argv):
    from ..utils.timing import interleaved_medians

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--size", type=int, default=640, help="the square image's side")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parse_args(parser, argv)
    if "rtdetr" in args.models:
        check_rtdetr_size(args.size)
    names = list(dict.fromkeys(args.models))
    rgb = random_image(args.size)
    with tempfile.TemporaryDirectory(prefix="d2ext-bench-models-") as tmp:
        calls, params = {}, {}
        for name in names:
            calls[name], params[name] = build_row(name, args.size, rgb, tmp)
        ms = interleaved_medians(calls, args.reps, "cpu")
    results = {name: {"model": ROWS[name][0], "outputs": ROWS[name][1], "params": params[name],
                      "ms": ms[name], "images_per_second": 1000.0 / ms[name],
                      "published": PUBLISHED[name]} for name in names}
    print(f"{args.size}x{args.size} random RGB image, CPU, fp32, batch 1, {torch.get_num_threads()}"
          f" threads, torch {torch.__version__}: median of {args.reps} interleaved rounds\n")
    print(markdown_table(results, args.size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "reps": args.reps, "threads": torch.get_num_threads(),
                       "rows": results}, f, indent=1)
    return 0


def main(argv=None):
    """benchmark_models: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("benchmark_models", _main, argv)
