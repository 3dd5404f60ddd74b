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
"""
import logging
import os

import cv2
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from d2ext.checkpoint import AtomicCheckpointer
from d2ext.engine import Trainer, draw_predictions, load_predictor, setup_cfg
from d2ext.utils.metrics_plots import plot_metrics
from d2ext.engine.predictor import predictor_metadata

logger = logging.getLogger("d2ext")


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts, args.register_coco, args.register_sem_seg)
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
    drawn = draw_predictions(image, load_predictor(cfg)(image), predictor_metadata(cfg))
    path = os.path.join(cfg.OUTPUT_DIR, "demo.png")
    cv2.imwrite(path, drawn[:, :, ::-1])
    logger.info(f"Predictions on {record['file_name']} drawn to {path}")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
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
    return parser


def cli(argv=None):
    """Parse the command line and run ``main`` in ``--num-gpus`` processes (detectron2's launch)."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
