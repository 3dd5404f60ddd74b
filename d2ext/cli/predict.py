"""Predict instances for many images into one COCO json, on several processes, resumably.

  python tools/predict.py --config-file C --input photos/ --output out/pred MODEL.WEIGHTS m.pth
  python tools/predict.py --config-file configs/sam3_text.yaml --input "photos/**/*.jpg" \\
      --output out/pred --batch-size 8 --num-gpus 4 MODEL.TEXT_PROMPT.CLASSES "['duck']"
  # the same command again after a crash or a kill continues where it stopped; then train on it:
  python tools/train_net.py --config-file C --register-coco pred out/pred/predictions.json \\
      photos/ DATASETS.TRAIN "('pred',)"

--input is a folder (searched recursively), a glob pattern (quoted), a .txt list of paths
(relative to the list's folder, or absolute) or a COCO json (its images, under --image-root).
Each process appends one image's result a line to OUT/shards/part-RANK.jsonl as it finishes;
at the end the shards are merged into OUT/predictions.json (file names relative to the input
root). A failing image is named and listed at the end, exit code 1.
"""
import argparse
import logging
import os

from detectron2.engine import launch
from detectron2.utils.logger import setup_logger

from ..engine.batch_predict import (
    MERGED_FILE,
    check_predicts_instances,
    fingerprint,
    list_inputs,
    merge_shards,
    predict_worker,
    prepare_output,
    repair_shards,
)
from ..engine.defaults import setup_cfg
from ..errors import UserError
from . import parse_args, run_tool

logger = logging.getLogger("d2ext")


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True,
                        help="a folder, a glob pattern, a .txt list of paths, or a COCO .json")
    parser.add_argument("--image-root", help="COCO .json input: the folder its file names are "
                                             "under (default: the json's folder)")
    parser.add_argument("--output", required=True, help="the run's folder (new, or this tool's)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per model call in each process")
    parser.add_argument("--min-score", type=float, default=0.3,
                        help="instances scoring below this are not written")
    parser.add_argument("--restart", action="store_true",
                        help="start over in --output (a run with another config or input list)")
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_ROOT"), help="as in tools/train_net.py")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="reader processes per predicting process (default: "
                             "DATALOADER.NUM_WORKERS on a GPU, 0 on the CPU: there the model's "
                             "threads already use every core, and a reader would take them)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine (one per GPU; on the CPU, gloo processes)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto",
                        help="detectron2's launch: tcp://HOST:PORT of machine 0 for several "
                             "machines")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks; stop at the first failing image")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def _worker(args, root, names):
    setup_logger(name="d2ext", distributed_rank=_rank())
    cfg = setup_cfg(args.config_file, args.opts, args.register_coco)
    workers = args.num_workers
    if workers is None:
        workers = 0 if cfg.MODEL.DEVICE == "cpu" else cfg.DATALOADER.NUM_WORKERS
    predict_worker(cfg, root, names, args.output, args.batch_size, args.min_score, args.debug,
                   num_workers=workers)


def _rank():
    from detectron2.utils import comm

    return comm.get_rank()


def run(argv):
    """Check the config, the inputs and the output folder once (a mistake is one line), run
    the prediction in ``--num-gpus`` processes per machine, merge on machine 0. Exit code 1
    when an image failed."""
    args = parse_args(argument_parser(), argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give 1 or more.")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError(f"--num-workers {args.num_workers}: give 0 (read in the predicting "
                        "process) or more.")
    args.output = os.path.abspath(args.output)
    cfg = setup_cfg(args.config_file, args.opts, args.register_coco)
    check_predicts_instances(cfg)
    root, names = list_inputs(args.input, args.image_root)
    main_machine = args.machine_rank == 0
    if main_machine:  # the output folder is shared by the machines; machine 0 prepares it
        info = {"input": args.input, "image_root": root, "num_images": len(names),
                "min_score": args.min_score, **fingerprint(cfg, names, args.min_score)}
        prepare_output(args.output, info, args.restart)
        with open(os.path.join(args.output, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        repair_shards(args.output)
    logger.info(f"{len(names)} images under {root}")
    launch(_worker, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args, root, names))
    if not main_machine:
        return 0
    written, failed = merge_shards(args.output, root, names)
    merged = os.path.join(args.output, MERGED_FILE)
    print(f"{written} of {len(names)} images predicted -> {merged}")
    if failed:
        print(f"{len(failed)} image(s) failed:" + "".join(
            f"\n  {os.path.join(root, n)}: {e}" for n, e in sorted(failed.items())))
        return 1
    print(f"Train on them with: --register-coco NAME {merged} {root}")
    return 0


def main(argv=None):
    """predict: a user mistake ends in one line, exit code 1 (``d2ext.cli.run_tool``)."""
    return run_tool("predict", run, argv)
