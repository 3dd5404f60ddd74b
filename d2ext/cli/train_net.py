"""Train or evaluate a d2ext model with detectron2's trainer.

  python tools/train_net.py --config-file configs/dinov3_maskrcnn.yaml
  python tools/train_net.py --config-file C --resume             # continue from OUTPUT_DIR
  python tools/train_net.py --config-file C --eval-only MODEL.WEIGHTS out/model_final.pth
  python tools/train_net.py --config-file C --num-gpus 2          # detectron2's launch (CPU: gloo)
  python tools/train_net.py --config-file C --register-coco my_train train.json images/ \\
      DATASETS.TRAIN "('my_train',)"
  python tools/train_net.py --config-file configs/quickstart_semseg.yaml \\
      --register-sem-seg my_train images/ masks/ DATASETS.TRAIN "('my_train',)" \\
      DATASETS.SEM_SEG_CLASSES "['background', 'person']" MODEL.SEM_SEG_HEAD.NUM_CLASSES 2
  python tools/train_net.py --config-file configs/dinov3_mask2former_panoptic.yaml \\
      --register-coco-panoptic my_train train.json train_pngs/ train_images/ \\
      --register-coco-panoptic my_val val.json val_pngs/ val_images/ \\
      DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)" MODEL.SEM_SEG_HEAD.NUM_CLASSES 12
"""
import logging
import os

import cv2
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from d2ext.checkpoint import AtomicCheckpointer, check_evaluation_classes
from d2ext.cli import parse_args, run_tool
from d2ext.data.datasets.checks import check_dataset_files
from d2ext.engine import Trainer, draw_predictions, load_predictor, setup_cfg
from d2ext.engine.predictor import predictor_metadata
from d2ext.utils.metrics_plots import plot_metrics

logger = logging.getLogger("d2ext")


def checked_cfg(args):
    """The config of the command line, its datasets checked to exist: a missing dataset is
    reported before any weights are downloaded."""
    cfg = setup_cfg(args.config_file, args.opts, args.register_coco, args.register_sem_seg,
                    args.register_coco_panoptic)
    check_dataset_files(([] if args.eval_only else list(cfg.DATASETS.TRAIN))
                        + list(cfg.DATASETS.TEST))
    return cfg


def setup(args):
    cfg = checked_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)  # logging, seeds, config.yaml copied into OUTPUT_DIR
    # detectron2 sets up its own loggers only: d2ext's messages (where demo.png and the plots
    # were written, skipped data) go to the console and OUTPUT_DIR/log.txt too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2ext")
    return cfg


def save_demo_image(cfg):
    """Predict on the first test image with the final weights; write OUTPUT_DIR/demo.png."""
    checkpoint = AtomicCheckpointer(None, save_dir=cfg.OUTPUT_DIR).get_checkpoint_file()
    if not cfg.DATASETS.TEST or not checkpoint:
        return
    record = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = checkpoint
    image = cv2.imread(record["file_name"])
    predictor = load_predictor(cfg)  # named as the checkpoint names its classes
    drawn = draw_predictions(image, predictor(image), predictor_metadata(cfg, predictor))
    path = os.path.join(cfg.OUTPUT_DIR, "demo.png")
    cv2.imwrite(path, drawn[:, :, ::-1])
    logger.info(f"Predictions on {record['file_name']} drawn to {path}")


def load_eval_weights(cfg, model, resume=False):
    """Load MODEL.WEIGHTS (``resume``: OUTPUT_DIR's last checkpoint, if any) into ``model`` for
    evaluation: the checkpoint must fit the model exactly, and the classes it was trained on
    (d2ext checkpoints record them) must be the test datasets' (``CheckpointError`` otherwise).
    Returns the checkpoint's extra data."""
    checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True, cfg=cfg)
    extra = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    check_evaluation_classes(extra.get("classes"), cfg, checkpointer.loaded_from)
    return extra


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_eval_weights(cfg, model, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process() and cfg.D2EXT.SAVE_DEMO_IMAGE:
        save_demo_image(cfg)
    if comm.is_main_process():
        plot_metrics(cfg.OUTPUT_DIR)  # training curves: OUTPUT_DIR/plots/*.png
    return results


def argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format instance dataset (repeatable); use NAME "
                             "in DATASETS.TRAIN / DATASETS.TEST")
    parser.add_argument("--register-sem-seg", nargs=3, action="append", default=[],
                        metavar=("NAME", "IMAGE_DIR", "MASK_DIR"),
                        help="register a semantic dataset: images and class-id PNG masks of the "
                             "same names (repeatable); classes: DATASETS.SEM_SEG_CLASSES")
    parser.add_argument("--register-coco-panoptic", nargs=4, action="append", default=[],
                        metavar=("NAME", "JSON", "PNG_DIR", "IMAGES"),
                        help="register a COCO panoptic-format dataset: its panoptic json, the "
                             "folder of its segment PNGs and the image folder (repeatable); "
                             "train with INPUT.DATASET_MAPPER_NAME mask_former_panoptic_lsj")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a configuration or data mistake instead of "
                             "its one-line message")
    return parser


def run(argv):
    args = parse_args(argument_parser(), argv)
    print("Command Line Args:", args)
    if args.num_gpus * args.num_machines > 1:
        # The config and the data are checked here, once, so that a mistake is one line
        # instead of one traceback per process.
        checked_cfg(args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


def cli(argv=None):
    """Parse the command line (options may follow the KEY VALUE overrides) and run ``main`` in
    ``--num-gpus`` processes (detectron2's launch); a user mistake is one line, exit code 1."""
    return run_tool("train_net", run, argv)
