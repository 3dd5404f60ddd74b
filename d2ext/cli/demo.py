"""Run a d2ext model on images or a video and draw its predictions with detectron2's Visualizer.

  python tools/demo.py --config-file configs/quickstart.yaml --input img.jpg --output out.jpg \\
      --opts MODEL.WEIGHTS output/quickstart/model_final.pth
  python tools/demo.py --config-file C --input 'photos/**/*.png' more/ --output drawn/
  python tools/demo.py --config-file C --video-input clip.mp4 --output clip_drawn.mp4
  python tools/demo.py --config-file C --webcam                    # window; q or Esc quits
  python tools/demo.py --config-file C --webcam --output cam.mp4   # headless: to a file
  python tools/demo.py --config-file configs/dinov3_sam.yaml --input img.jpg --output out.png \
      --method clustering --num-segments 5       # zero-training SAM-prompt configs
  python tools/demo.py --config-file configs/sam3_text.yaml --input img.jpg --output out.png \
      --classes duck panda                       # SAM 3 text prompts: any class names

Inputs may be files, globs and directories (searched recursively). With several inputs, or an
--output folder, the input tree is mirrored under --output (a/x.jpg -> OUT/a/x.jpg.png); an
input is never written over. A file that cannot be read, or whose prediction fails, is reported
by name and skipped; the summary lists every failed file and the exit code is 1 if any failed.
"""
import argparse
import glob
import logging
import os
from functools import partial

import cv2
import numpy as np
import tqdm
from detectron2.data.catalog import Metadata
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer

from d2ext.data.datasets.sem_seg_folders import stable_colors
from d2ext.data.image_io import ImageReadError, read_image_any
from d2ext.engine import draw_predictions, load_predictor, setup_cfg
from d2ext.engine.predictor import draw_outputs, predictor_metadata
from d2ext.modeling.text_prompt import TextPromptError

logger = logging.getLogger("d2ext.demo")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


# The repository's quickstart (this file is d2ext/cli/demo.py), for a demo run without options.
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART_CONFIG = os.path.join(_REPO, "configs", "quickstart.yaml")


def quickstart_weights():
    """["MODEL.WEIGHTS", path] of the quickstart's trained model (output/quickstart/
    model_final.pth here or in the repository), or [] when it has not been trained."""
    for root in (os.getcwd(), _REPO):
        path = os.path.join(root, "output", "quickstart", "model_final.pth")
        if os.path.isfile(path):
            return ["MODEL.WEIGHTS", path]
    return []


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE",
                        help="default: the repository's configs/quickstart.yaml, with the "
                             "quickstart's trained output/quickstart/model_final.pth when it "
                             "exists")
    parser.add_argument("--input", nargs="+", default=[],
                        help="image files, glob patterns or directories (recursive)")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--webcam", action="store_true",
                        help="predict on the webcam (a window; with --output, a video file)")
    parser.add_argument("--camera", type=int, default=0, help="camera index for --webcam")
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
    # Text-prompt configs (META_ARCHITECTURE TextPromptSegmentor) only:
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="text-prompt configs: the classes to find, e.g. duck panda (any "
                             "names; a subset of MODEL.TEXT_PROMPT.CLASSES where it is set)")
    parser.add_argument("--debug", action="store_true",
                        help="stop at the first failing image with its traceback")
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


def text_prompt_opts(cfg, args):
    """Config overrides for --classes (text-prompt configs): those classes, prompted freely (no
    test dataset), each with its phrase from MODEL.TEXT_PROMPT.PROMPTS when the config lists its
    classes (then --classes must be some of them)."""
    if not args.classes:
        return []
    tp = cfg.MODEL.TEXT_PROMPT
    if cfg.MODEL.META_ARCHITECTURE != "TextPromptSegmentor":
        raise ValueError(f"--classes applies to text-prompt configs (MODEL.META_ARCHITECTURE "
                         f"TextPromptSegmentor); {args.config_file} uses "
                         f"{cfg.MODEL.META_ARCHITECTURE}")
    fixed = list(tp.CLASSES)
    unknown = [c for c in args.classes if fixed and c not in fixed]
    if unknown:
        raise ValueError(f"--classes {unknown}: {args.config_file} finds only "
                         f"MODEL.TEXT_PROMPT.CLASSES {fixed}; choose among them")
    prompts = [tp.PROMPTS[fixed.index(c)] for c in args.classes] if fixed and tp.PROMPTS else []
    return ["MODEL.TEXT_PROMPT.CLASSES", list(args.classes), "MODEL.TEXT_PROMPT.PROMPTS",
            prompts, "DATASETS.TEST", ()]


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
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            files += matched or [pattern]  # an unmatched pattern is reported like a bad file
        else:
            files.append(pattern)
    return list(dict.fromkeys(files))


def output_paths(output, files):
    """path -> where its drawing goes (None without ``output``). One input and an output with a
    file extension: that file. Otherwise the inputs' folder tree below their common folder is
    mirrored under ``output``, each drawing named after its whole input name (``a/x.jpg`` ->
    ``OUT/a/x.jpg.png``), so no two inputs share an output. An output that would replace an
    input maps to None (the caller reports it)."""
    if output is None:
        return dict.fromkeys(files)
    if len(files) == 1 and os.path.splitext(output)[1] and not os.path.isdir(output):
        targets = {files[0]: output}
    else:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
        targets = {f: os.path.join(output, os.path.relpath(os.path.abspath(f), root) + ".png")
                   for f in files}
    inputs = {os.path.realpath(f) for f in files}
    return {f: None if os.path.realpath(t) in inputs else t for f, t in targets.items()}


def run_images(predictor, metadata, files, args):
    """Predict and draw every file; returns the files that failed. An exception while reading,
    predicting, drawing or writing one image is logged with its file name and the run goes
    on."""
    failed = []
    targets = output_paths(args.output, files)
    many = len(files) > 1
    for path in tqdm.tqdm(files, desc="images", unit="img", disable=not many):
        if args.output is not None and targets[path] is None:
            logger.error(f"skipped {path}: its drawing would replace the input; choose another "
                         "--output")
            failed.append(path)
            continue
        try:
            image = read_image_any(path, format="BGR")
        except ImageReadError as err:
            logger.error(f"skipped {err}")
            failed.append(path)
            continue
        try:
            outputs = predictor(image)
            if "instances" in outputs:
                kept = (outputs["instances"].scores >= args.confidence_threshold).sum().item()
                logger.info(f"{path}: {kept} instances")
            target = targets[path]
            if target:
                drawn = draw_predictions(image, outputs, metadata, args.confidence_threshold)
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                if not cv2.imwrite(target, drawn[:, :, ::-1]):
                    raise OSError(f"could not write {target}")
                logger.info(f"{path}: drawn to {target}")
        except Exception as err:  # one image never ends a run over many
            if args.debug:
                raise
            message = (str(err).strip().splitlines() or [""])[0]
            logger.error(f"failed {path}: {type(err).__name__}: {message}")
            failed.append(path)
    return failed


# --- video and webcam ---
def draw_video_frame(visualizer, frame, outputs, confidence_threshold):
    """Draw ``outputs`` on a BGR frame with detectron2's VideoVisualizer, which keeps each
    instance's colour from frame to frame; returns a BGR frame of the input's size."""
    rgb = frame[:, :, ::-1]
    vis = draw_outputs(outputs, partial(visualizer.draw_panoptic_seg_predictions, rgb),
                       partial(visualizer.draw_instance_predictions, rgb),
                       partial(visualizer.draw_sem_seg, rgb), confidence_threshold)
    drawn = vis.get_image()[:, :, ::-1]
    if drawn.shape[:2] != frame.shape[:2]:  # VideoWriter silently drops frames of another size
        drawn = cv2.resize(drawn, (frame.shape[1], frame.shape[0]))
    return np.ascontiguousarray(drawn)


def open_video_writer(path, fps, width, height):
    """A cv2.VideoWriter: Motion-JPEG for .avi, MPEG-4 part 2 otherwise (both built into
    OpenCV's wheels)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fourcc = "MJPG" if path.lower().endswith(".avi") else "mp4v"
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write a {fourcc} video here; use a .mp4 or .avi "
                      "output path in a writable folder.")
    return writer


def run_stream(predictor, metadata, capture, target, args, show=False, total=None):
    """Predict on every frame of ``capture`` in order. Frames go to the video ``target`` (same
    fps and size as the input) and/or a window (``show``; q or Esc stops). The progress bar's
    rate is the end-to-end frames per second. A truncated stream, a camera that stops or
    Ctrl-C end the run cleanly: the writer is closed, so every frame drawn so far is kept.
    Returns the number of frames processed."""
    # Random colours per frame would flicker: give classes without colours fixed ones.
    if hasattr(metadata, "stuff_classes") and not hasattr(metadata, "stuff_colors"):
        metadata.set(stuff_colors=stable_colors(len(metadata.stuff_classes)))
    visualizer = VideoVisualizer(metadata)
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 0 < fps < 1000 else 30.0  # cameras and broken headers may report 0 or junk
    writer, frames = None, 0
    try:
        with tqdm.tqdm(total=total, desc="frames", unit="frame", dynamic_ncols=True) as bar:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                outputs = predictor(frame)
                if target or show:
                    drawn = draw_video_frame(visualizer, frame, outputs, args.confidence_threshold)
                if target:
                    if writer is None:  # sized from the first decoded frame, not the header
                        writer = open_video_writer(target, fps, frame.shape[1], frame.shape[0])
                    writer.write(drawn)
                frames += 1
                bar.update(1)
                if show:
                    cv2.imshow("d2ext", drawn)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
    except KeyboardInterrupt:
        logger.info("interrupted")
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if show:
            cv2.destroyAllWindows()
    logger.info(f"{frames} frames processed" + (f", written to {target}" if target else ""))
    return frames


def video_output_path(output, source):
    if output and (os.path.isdir(output) or not os.path.splitext(output)[1]):
        return os.path.join(output, os.path.splitext(os.path.basename(source))[0] + ".mp4")
    return output


def run_video(predictor, metadata, args):
    """Predict on ``args.video_input`` frame by frame into ``args.output``; returns 1 when the
    file cannot be opened as a video, else 0."""
    capture = cv2.VideoCapture(args.video_input)
    if not capture.isOpened():
        logger.error(f"{args.video_input}: cannot be opened as a video")
        return 1
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    run_stream(predictor, metadata, capture, video_output_path(args.output, args.video_input),
               args, total=total if total > 0 else None)
    return 0


def gui_available():
    try:
        cv2.namedWindow("d2ext")
        return True
    except cv2.error:  # opencv-python-headless has no GUI
        return False


def run_webcam(predictor, metadata, args):
    """Camera ``args.camera`` into ``args.output`` if given, else into a window (needs an
    OpenCV with GUI). Returns 1 when the camera cannot be opened, else 0."""
    capture = cv2.VideoCapture(args.camera)
    if not capture.isOpened():
        logger.error(f"camera {args.camera} cannot be opened (is a webcam connected and free?)")
        return 1
    target = video_output_path(args.output, "webcam") if args.output else None
    run_stream(predictor, metadata, capture, target, args, show=not args.output)
    return 0
# --- end of video and webcam ---


def main(argv=None):
    args = argument_parser().parse_args(argv)
    setup_logger(name="d2ext")
    setup_logger(name="detectron2")
    if not args.input and not args.video_input and not args.webcam:
        logger.error("nothing to do: give --input, --video-input or --webcam")
        return 2
    if args.webcam and not args.output and not gui_available():  # before loading the model
        logger.error("this OpenCV has no GUI (opencv-python-headless): give --output to write "
                     "the webcam video to a file, or install opencv-python")
        return 2
    if args.output:  # before loading the model: a folder that cannot be written is one error
        folder = args.output if not os.path.splitext(args.output)[1] else \
            os.path.dirname(args.output) or "."
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            logger.error(f"--output {args.output}: cannot create {folder} ({err.strerror}); "
                         "choose a folder you can write to")
            return 2
        if not os.access(folder, os.W_OK):
            logger.error(f"--output {args.output}: {folder} is not writable; choose a folder "
                         "you can write to")
            return 2
    cfg = setup_cfg(args.config_file or QUICKSTART_CONFIG,
                    (quickstart_weights() if args.config_file is None else []) + args.opts)
    if not cfg.MODEL.WEIGHTS and cfg.MODEL.META_ARCHITECTURE not in ("DinoSamPrompt",
                                                                      "TextPromptSegmentor"):
        logger.warning("MODEL.WEIGHTS is empty: the model has no trained weights and its "
                       "predictions mean nothing. Train it first (python tools/train_net.py "
                       "--config-file configs/quickstart.yaml) or give --opts MODEL.WEIGHTS "
                       "FILE.pth.")
    try:
        cfg.merge_from_list(sam_prompt_opts(cfg, args) + text_prompt_opts(cfg, args))
    except ValueError as err:
        logger.error(str(err))
        return 2
    try:
        predictor = load_predictor(cfg)
    except TextPromptError as err:
        logger.error(str(err))
        return 2
    metadata = predictor_metadata(cfg)
    if getattr(predictor.model, "class_names", None):  # zero-training models name their classes
        metadata = Metadata(name="d2ext_demo", thing_classes=list(predictor.model.class_names))
    failed = 0
    if args.input:
        files = expand_inputs(args.input)
        if not files:
            logger.error(f"no files match {args.input}")
            return 1
        failed_files = run_images(predictor, metadata, files, args)
        failed += len(failed_files)
        logger.info(f"{len(files) - len(failed_files)} of {len(files)} images done, "
                    f"{len(failed_files)} failed" + "".join(f"\n  {f}" for f in failed_files))
    if args.video_input:
        failed += run_video(predictor, metadata, args)
    if args.webcam:
        failed += run_webcam(predictor, metadata, args)
    return 1 if failed else 0
