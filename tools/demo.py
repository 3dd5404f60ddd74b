#!/usr/bin/env python
"""Run a d2ext model on images or a video and draw its predictions with detectron2's Visualizer.

  python tools/demo.py --config-file configs/quickstart.yaml --input img.jpg --output out.jpg \\
      --opts MODEL.WEIGHTS output/quickstart/model_final.pth
  python tools/demo.py --config-file C --input 'photos/**/*.png' more/ --output drawn/
  python tools/demo.py --config-file C --video-input clip.mp4 --output clip_drawn.mp4
  python tools/demo.py --config-file configs/dinov3_sam.yaml --input img.jpg --output out.png \
      --method clustering --num-segments 5       # zero-training SAM-prompt configs

Inputs may be files, globs and directories (searched recursively). A file that cannot be read
as an image is reported by name and skipped; the exit code is 1 if any input failed, else 0.
"""
import argparse
import glob
import logging
import os
import sys

import cv2
import tqdm
from detectron2.data.catalog import Metadata
from detectron2.utils.logger import setup_logger

from d2ext.data.image_io import ImageReadError, read_image_any
from d2ext.engine import draw_predictions, load_predictor, setup_cfg
from d2ext.engine.predictor import predictor_metadata

logger = logging.getLogger("d2ext.demo")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/quickstart.yaml", metavar="FILE")
    parser.add_argument("--input", nargs="+", default=[],
                        help="image files, glob patterns or directories (recursive)")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", help="output file (one input) or directory; without it, "
                                         "results are only counted and logged")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    # SAM-prompt configs (META_ARCHITECTURE DinoSamPrompt) only:
    parser.add_argument("--method", choices=["clustering", "attention", "prototypes", "grid"],
                        help="SAM-prompt configs: how prompts are chosen "
                             "(MODEL.SAM_PROMPT.METHOD)")
    parser.add_argument("--num-segments", type=int,
                        help="SAM-prompt configs: clusters / attention points "
                             "(MODEL.SAM_PROMPT.NUM_SEGMENTS)")
    parser.add_argument("--reference", nargs=3, action="append", default=[],
                        metavar=("IMAGE", "MASK", "CLASS"),
                        help="SAM-prompt configs: a reference image, its mask image (non-zero = "
                             "CLASS) and the class name, for --method prototypes (repeatable)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def sam_prompt_opts(cfg, args):
    """Config overrides for --method / --num-segments / --reference (SAM-prompt configs)."""
    opts = []
    if args.method:
        opts += ["MODEL.SAM_PROMPT.METHOD", args.method]
    if args.num_segments is not None:
        opts += ["MODEL.SAM_PROMPT.NUM_SEGMENTS", args.num_segments]
    if args.reference:
        opts += ["MODEL.SAM_PROMPT.PROTOTYPE_REFERENCES", [list(r) for r in args.reference]]
        if not args.method:
            opts += ["MODEL.SAM_PROMPT.METHOD", "prototypes"]
    if opts and cfg.MODEL.META_ARCHITECTURE != "DinoSamPrompt":
        raise ValueError(f"--method, --num-segments and --reference apply to SAM-prompt configs "
                         f"(MODEL.META_ARCHITECTURE DinoSamPrompt); {args.config_file} uses "
                         f"{cfg.MODEL.META_ARCHITECTURE}")
    return opts


def expand_inputs(patterns):
    """Files named by ``patterns`` (paths, globs, directories walked recursively), in order,
    without duplicates; hidden files in directories are skipped. Unmatched patterns are
    returned as they are, so they are reported as failures."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            for root, dirs, names in os.walk(pattern):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        elif glob.has_magic(pattern):
            files += sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        else:
            files.append(pattern)
    return list(dict.fromkeys(files))


def output_path(output, path, many):
    if output is None:
        return None
    if many or os.path.isdir(output) or not os.path.splitext(output)[1]:
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    return output


def run_images(predictor, metadata, files, args):
    """Predict and draw every file; returns the number that failed."""
    failed = 0
    many = len(files) > 1
    for path in tqdm.tqdm(files, desc="images", unit="img", disable=not many):
        try:
            image = read_image_any(path, format="BGR")
        except ImageReadError as err:
            logger.error(f"skipped {err}")
            failed += 1
            continue
        outputs = predictor(image)
        if "instances" in outputs:
            kept = (outputs["instances"].scores >= args.confidence_threshold).sum().item()
            logger.info(f"{path}: {kept} instances")
        target = output_path(args.output, path, many)
        if target:
            drawn = draw_predictions(image, outputs, metadata, args.confidence_threshold)
            if not cv2.imwrite(target, drawn[:, :, ::-1]):
                logger.error(f"could not write {target}")
                failed += 1
    return failed


def run_video(predictor, metadata, args):
    """Predict frame by frame; the output video keeps the input's fps and frame size. A
    truncated or corrupt stream ends the run cleanly with every decoded frame written."""
    video = cv2.VideoCapture(args.video_input)
    if not video.isOpened():
        logger.error(f"{args.video_input}: cannot be opened as a video")
        return 1
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    target = args.output
    if target and (os.path.isdir(target) or not os.path.splitext(target)[1]):
        os.makedirs(target, exist_ok=True)
        target = os.path.join(target, os.path.splitext(os.path.basename(args.video_input))[0]
                              + ".mp4")
    writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)) \
        if target else None
    frames = 0
    with tqdm.tqdm(total=total, desc="frames", unit="frame") as bar:
        while True:
            ok, frame = video.read()
            if not ok:
                break
            outputs = predictor(frame)
            if writer is not None:
                drawn = draw_predictions(frame, outputs, metadata, args.confidence_threshold)
                writer.write(drawn[:, :, ::-1])
            frames += 1
            bar.update(1)
    video.release()
    if writer is not None:
        writer.release()
    logger.info(f"{frames} frames processed" + (f", written to {target}" if target else ""))
    return 0


def main(argv=None):
    args = argument_parser().parse_args(argv)
    setup_logger(name="d2ext")
    setup_logger(name="detectron2")
    if not args.input and not args.video_input:
        logger.error("nothing to do: give --input and/or --video-input")
        return 2
    cfg = setup_cfg(args.config_file, args.opts)
    try:
        cfg.merge_from_list(sam_prompt_opts(cfg, args))
    except ValueError as err:
        logger.error(str(err))
        return 2
    predictor = load_predictor(cfg)
    metadata = predictor_metadata(cfg)
    if getattr(predictor.model, "class_names", None):  # SAM-prompt models name their classes
        metadata = Metadata(name="d2ext_demo", thing_classes=list(predictor.model.class_names))
    failed = 0
    if args.input:
        files = expand_inputs(args.input)
        if not files:
            logger.error(f"no files match {args.input}")
            return 1
        failed += run_images(predictor, metadata, files, args)
        logger.info(f"{len(files) - failed} of {len(files)} images done, {failed} failed")
    if args.video_input:
        failed += run_video(predictor, metadata, args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
