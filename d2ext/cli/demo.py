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
input is never written over. An existing file is replaced only if it is one of the demo's own .png
drawings (they carry a mark): any other file at a drawing's or video's path (a .jpg drawing or a
video of an earlier run included) stops the run before the model loads, unless --overwrite. A
file that cannot be read, or whose prediction fails, is reported by name and skipped; the
summary lists every failed file and the exit code is 1 if any failed.
"""
import argparse
import glob
import logging
import os
import struct
import zlib
from functools import partial

import cv2
import numpy as np
import tqdm
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer

from d2ext.data.datasets.sem_seg_folders import stable_colors
from d2ext.data.image_io import ImageReadError, read_image_any
from d2ext.engine import draw_predictions, load_predictor, setup_cfg
from d2ext.engine.predictor import draw_outputs, predictor_metadata
from d2ext.errors import UserError
from d2ext.modeling.meta_arch import capabilities

from . import parse_args, run_tool, split_class_names

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
                                         "results are only counted and logged. Existing files "
                                         "there are replaced only if they are the demo's own "
                                         ".png drawings")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace any existing file at a drawing's or video's path (never "
                             "an input)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    # SAM-prompt configs (DinoSamPrompt: prompts chosen per image) only:
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
    # Text-prompt configs (TextPromptSegmentor: classes named at run time) only:
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="text-prompt configs: the classes to find, e.g. duck panda (any "
                             "names; a subset of MODEL.TEXT_PROMPT.CLASSES where it is set). The "
                             "first upper-case dotted word (a config key, e.g. MODEL.DEVICE) "
                             "ends the list: it and the rest are config overrides")
    parser.add_argument("--debug", action="store_true",
                        help="stop at the first failing image with its traceback")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def classes_before_opts(args):
    """``args`` with the KEY VALUE overrides that --classes took (it is ``nargs="+"``) moved to
    the front of --opts; ValueError for an empty class name."""
    if args.classes:
        args.classes, overrides = split_class_names(args.classes)
        args.opts = overrides + list(args.opts or [])
    return args


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
    caps = capabilities(cfg)
    if opts and not caps.prompt_methods:
        raise UserError(f"--method, --num-segments and --reference apply to SAM-prompt configs "
                         f"(DinoSamPrompt); {args.config_file} uses {caps.name}")
    return opts


def text_prompt_opts(cfg, args):
    """Config overrides for --classes (text-prompt configs): those classes, prompted freely (no
    test dataset). A class keeps its phrases from MODEL.TEXT_PROMPT.PROMPTS, found by its name:
    PROMPTS rephrase MODEL.TEXT_PROMPT.CLASSES one by one (then --classes must be some of
    them), or the test dataset's classes where CLASSES is empty."""
    if not args.classes:
        return []
    tp = cfg.MODEL.TEXT_PROMPT
    caps = capabilities(cfg)
    if not caps.open_vocabulary:
        raise UserError(f"--classes applies to text-prompt configs (TextPromptSegmentor); "
                         f"{args.config_file} uses {caps.name}")
    fixed = [str(c) for c in tp.CLASSES]
    unknown = [c for c in args.classes if fixed and c not in fixed]
    if unknown:
        raise UserError(f"--classes {unknown}: {args.config_file} finds only "
                         f"MODEL.TEXT_PROMPT.CLASSES {fixed}; choose among them")
    rephrased = fixed
    if tp.PROMPTS and not fixed:
        from d2ext.data.datasets import evaluation_thing_classes

        rephrased = [str(c) for c in evaluation_thing_classes(cfg)]
    if tp.PROMPTS and len(tp.PROMPTS) != len(rephrased):
        source = "MODEL.TEXT_PROMPT.CLASSES" if fixed else "the test dataset"
        raise UserError(f"MODEL.TEXT_PROMPT.PROMPTS has {len(tp.PROMPTS)} phrases for the "
                         f"{len(rephrased)} classes of {source}: give one per class ('' = its "
                         "name)")
    phrasings = list(zip(rephrased, tp.PROMPTS))
    classes, prompts = [], []
    for name in dict.fromkeys(args.classes):
        phrases = [p for n, p in phrasings if n == name] or [""]  # every phrase of the class
        classes += [name] * len(phrases)
        prompts += phrases
    return ["MODEL.TEXT_PROMPT.CLASSES", classes, "MODEL.TEXT_PROMPT.PROMPTS",
            prompts if any(prompts) else [], "DATASETS.TEST", ()]


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


# Every .png drawing carries this text chunk right after its header: the demo replaces a file
# only if it carries it, so a user's own file at a drawing's path is never lost.
_MARK_BODY = b"tEXtSoftware\0d2ext tools/demo.py"
DRAWING_MARK = struct.pack(">I", len(_MARK_BODY) - 4) + _MARK_BODY + \
    struct.pack(">I", zlib.crc32(_MARK_BODY))
_PNG_HEADER = 33  # the PNG signature (8 bytes) and its IHDR chunk (25), always first


def write_drawing(path, bgr):
    """Write a BGR drawing to ``path``: a .png with DRAWING_MARK, another extension with
    OpenCV's encoder for it."""
    if not path.lower().endswith(".png"):
        if not cv2.imwrite(path, bgr):
            raise OSError(f"could not write {path}")
        return
    ok, png = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"could not encode {path}")
    png = png.tobytes()
    with open(path, "wb") as f:
        f.write(png[:_PNG_HEADER] + DRAWING_MARK + png[_PNG_HEADER:])


def is_demo_drawing(path):
    """Whether ``path`` is a .png drawing written by this demo (it carries DRAWING_MARK)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PNG_HEADER + len(DRAWING_MARK))
    except OSError:  # a folder, unreadable: not a drawing
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and head[_PNG_HEADER:] == DRAWING_MARK


def files_in_the_way(args):
    """Existing paths that this run's drawings or videos would replace and that are not the
    demo's own drawings."""
    targets = []
    if args.input:
        files = expand_inputs(args.input)
        targets += output_paths(args.output, files).values() if files else []
    if args.video_input:
        targets.append(video_output_path(args.output, args.video_input))
    if args.webcam:
        targets.append(video_output_path(args.output, "webcam"))
    return [t for t in dict.fromkeys(targets)
            if t and os.path.lexists(t) and not is_demo_drawing(t)]


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
                write_drawing(target, np.ascontiguousarray(drawn[:, :, ::-1]))
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


def _main(argv):
    args = parse_args(argument_parser(), argv)
    setup_logger(name="d2ext")
    setup_logger(name="detectron2")
    try:
        args = classes_before_opts(args)
    except UserError as err:
        logger.error(str(err))
        return 2
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
        video = args.video_input and video_output_path(args.output, args.video_input)
        if video and os.path.realpath(video) == os.path.realpath(args.video_input):
            logger.error(f"--output {args.output}: the drawn video would replace the input "
                         f"{args.video_input}; choose another --output")
            return 2
        in_the_way = [] if args.overwrite else files_in_the_way(args)
        if in_the_way:
            shown = ", ".join(in_the_way[:3]) + (f" and {len(in_the_way) - 3} more"
                                                  if len(in_the_way) > 3 else "")
            logger.error(f"--output {args.output}: would replace {len(in_the_way)} existing "
                         f"file(s) that are not the demo's .png drawings ({shown}); choose "
                         "another --output, or pass --overwrite")
            return 2
    cfg = setup_cfg(args.config_file or QUICKSTART_CONFIG,
                    (quickstart_weights() if args.config_file is None else []) + args.opts)
    if not cfg.MODEL.WEIGHTS and capabilities(cfg).trainable:
        logger.warning("MODEL.WEIGHTS is empty: the model has no trained weights and its "
                       "predictions mean nothing. Train it first (python tools/train_net.py "
                       "--config-file configs/quickstart.yaml) or give --opts MODEL.WEIGHTS "
                       "FILE.pth.")
    try:
        cfg.merge_from_list(sam_prompt_opts(cfg, args) + text_prompt_opts(cfg, args))
    except UserError as err:
        logger.error(str(err))
        return 2
    try:
        predictor = load_predictor(cfg)
    except UserError as err:
        logger.error(str(err))
        return 2
    # the classes as the checkpoint (or a zero-training model) names them
    metadata = predictor_metadata(cfg, predictor)
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


def main(argv=None):
    """demo: a user mistake ends in one line (``d2ext.cli.run_tool``); one failing image is
    named and skipped (--debug: stops there with its traceback)."""
    return run_tool("demo", _main, argv)
