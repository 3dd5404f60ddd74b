"""Export a d2ext model to ONNX or a torch.export program, for serving without detectron2.

    python tools/export_model.py --config-file configs/dinov3_eomt_small.yaml --format onnx \\
        --output exported/eomt_s [--size H W | --dynamic] [--opset 18] \\
        [MODEL.WEIGHTS model_final.pth ...]

OUTPUT (a new or empty folder; --overwrite writes into one with files, replacing the export's
own) gets model.onnx or model.pt2 (torch.export.load), export.json (inputs, outputs, size,
pixel mean and std: what a caller without detectron2 needs) and config.yaml. ONNX opset: 18 by
default, the oldest the dynamo exporter writes, so the widest-read; --opset 23 adds ONNX's fused
Attention op, which ONNX Runtime reads from 1.23 on (Mask R-CNN's traced export: 20 at most). The
graph takes the normalised image zero-padded at the bottom and right, (1, 3, H, W) float32
"images" (Mask R-CNN also "image_size", the (h, w) int64 of the image inside the padding), and
returns the raw head outputs: EoMT and DinoMask2Former pred_logits (1, Q, K+1) and pred_masks
(1, Q, H/4, W/4); DinoSemanticSegmentor sem_seg_logits (1, K, H/16, W/16); Mask R-CNN
pred_boxes, scores, pred_classes, pred_masks (box-local mask probabilities).
d2ext.export.ExportedModel / ExportedPredictor turn them into the eager model's Instances and
sem_seg with the same post-processing.

Sizes: --dynamic (the default where allowed) takes any H and W that are multiples of the
model's padding multiple, at least export.json's min_side (an ONNX file: one multiple, checked
against eager when written; a torch_export program: two): 16 for EoMT (its patch size) and
DinoSemanticSegmentor, 32 for DinoMask2Former (MODEL.MASK_FORMER.SIZE_DIVISIBILITY) and Mask
R-CNN. A fixed --size only (default: INPUT.MAX_SIZE_TEST square, rounded up to the multiple):
DINOv2 backbones; on the DINO ViT, Mask R-CNN and the torch_export format of DinoMask2Former
and DinoSemanticSegmentor. Mask R-CNN exports to ONNX only; the prompt families (DinoSamPrompt,
TextPromptSegmentor) are refused. After writing, the export is run on random images (two sizes
when dynamic) and its largest difference from the eager model printed.
"""
import argparse
import logging
import os

from detectron2.utils.logger import setup_logger

from ..engine import load_predictor, setup_cfg
from ..errors import UserError
from ..export.exporter import (
    FORMATS,
    ONNX_OPSET,
    check_exportable,
    difference_from_eager,
    export_model,
    fixed_size_reason,
    largest_test_size,
    size_multiple,
)
from . import parse_args, run_tool

logger = logging.getLogger("d2ext.export_model")


def output_refusal(output, overwrite=False):
    """Why the export must not write into ``output`` (one line), or None: a file there, or a
    folder with files in it (a user's, or an earlier export's) unless ``overwrite``."""
    if os.path.exists(output) and not os.path.isdir(output):
        return f"--output {output} is a file; name a folder to write the export into"
    entries = sorted(os.listdir(output)) if os.path.isdir(output) else []
    if not entries or overwrite:
        return None
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    return (f"--output {output} is not empty ({shown}); choose a new or empty folder, or pass "
            "--overwrite to replace the export's files in it")


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder to write: new or empty, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --output, replacing the export's files "
                             "there (its other files are left as they are)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                       help="fixed input size (multiples of the model's padding multiple)")
    sizes.add_argument("--dynamic", action="store_true", help="any H and W (see above)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET,
                        help="ONNX opset, 18 to 23 (--format onnx; see above)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parse_args(parser, argv)
    setup_logger(name="d2ext")
    if not os.path.isfile(args.config_file):
        raise UserError(f"--config-file {args.config_file}: no such file")
    refusal = output_refusal(args.output, args.overwrite)  # before anything is built
    if refusal:
        raise UserError(refusal)
    cfg = setup_cfg(args.config_file, args.opts)
    fixed_only = fixed_size_reason(cfg, args.format)
    dynamic = args.dynamic or (args.size is None and fixed_only is None)
    check_exportable(cfg, args.format, dynamic, args.opset)  # before the model is built
    model = load_predictor(cfg, compile=False).model  # exported as a graph, never compiled
    multiple = size_multiple(model)
    size = None if dynamic else tuple(args.size or largest_test_size(cfg, multiple))
    if not dynamic and args.size is None:
        logger.info(f"{fixed_only}: exporting at {size[0]}x{size[1]} (--size H W to choose)")
    spec = export_model(model, cfg, args.output, args.format, size, args.opset)
    trace = size or largest_test_size(cfg, multiple)
    checks = [trace] if size else [trace, (trace[0] - multiple, trace[1] - 2 * multiple)]
    checks = [c for c in checks if min(c) >= 2 * multiple]
    diff = difference_from_eager(model, cfg, args.output, checks)
    shape = f"{size[0]}x{size[1]}" if size else f"any H, W multiples of {multiple}"
    print(f"wrote {args.output}/{spec['file']} ({args.format}, {shape}), export.json, "
          f"config.yaml\nlargest difference from the eager model on random images of "
          f"{', '.join(f'{h}x{w}' for h, w in checks)}: {diff:.2e}")
    return 0


def main(argv=None):
    """export_model: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("export_model", _main, argv)
