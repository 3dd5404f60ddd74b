"""detectron2's DefaultTrainer, set up for d2ext models."""
import json
import logging
import math
import os
import weakref

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import AtomicCheckpointer, training_classes
from ..data.dataset_mappers import SkipUnreadableImages, build_default_mapper, build_train_mapper
from ..data.datasets import DatasetError
from ..errors import UserError
from ..modeling.meta_arch import capabilities
from ..modeling.meta_arch.capabilities import compile_configured
from ..solver import build_lr_scheduler, build_optimizer
from .accumulation import AccumulatingTrainer, AMPAccumulatingTrainer
from .defaults import check_num_classes

logger = logging.getLogger(__name__)
# The per-image output each dataset evaluator_type is scored on.
EVALUATED_OUTPUT = {"coco": "instances", "sem_seg": "sem_seg",
                    "coco_panoptic_seg": "panoptic_seg"}


def restore_best_metric(hook, metrics_file, before_iter):
    """Give a ``BestCheckpointer`` the best value of its metric that ``metrics_file``
    (detectron2's metrics.json) recorded before iteration ``before_iter``, so that a resumed run
    keeps ``model_best.pth`` unless it does better."""
    if not os.path.isfile(metrics_file):
        return
    best = None
    with open(metrics_file) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by the interruption
                continue
            value, iteration = record.get(hook._val_metric), record.get("iteration", -1)
            if value is None or iteration >= before_iter or not math.isfinite(value):
                continue
            if best is None or hook._compare(value, best[0]):
                best = (value, iteration)
    if best is not None:
        hook._update_best(*best)
        logger.info(f"Resumed best {hook._val_metric}: {best[0]:.4f} at iteration {best[1]}")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with: COCO / semantic / panoptic evaluators chosen by the dataset's
    ``evaluator_type``; the DINO optimizer (backbone LR multiplier, layer decay, clipping);
    the best checkpoint kept by TEST.BEST_CHECKPOINT_METRIC; crash-safe checkpoint writes;
    multi-process training on CPU (gloo); AMP on CUDA with SOLVER.AMP.PRECISION; gradient
    accumulation in micro-batches of SOLVER.IMS_PER_DEVICE (``AccumulatingTrainer``)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except that DDP gets no device ids for CPU models (DDP
        # rejects them) and the step trainer and checkpointer are d2ext's.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cuda = next(model.parameters()).device.type == "cuda"
        model = create_ddp_model(model, broadcast_buffers=False,
                                 **({} if on_cuda else {"device_ids": None}))
        self._trainer = self._build_step_trainer(cfg, model, data_loader, optimizer, on_cuda)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Fine-tuning from MODEL.WEIGHTS is lenient (another class count), a resume is strict;
        # every save records the training data's classes (the datasets are loaded by now).
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, cfg=cfg,
                                               extra_data={"classes": training_classes(cfg)},
                                               trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def _build_step_trainer(cfg, model, data_loader, optimizer, on_cuda):
        """detectron2's SimpleTrainer / AMPTrainer, or d2ext's accumulating ones where
        SOLVER.IMS_PER_DEVICE is below this device's share of SOLVER.IMS_PER_BATCH."""
        per_device = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        micro = cfg.SOLVER.IMS_PER_DEVICE
        if micro < 0:
            raise UserError(f"SOLVER.IMS_PER_DEVICE={micro}: set the images per forward pass on "
                            "each device (at least 1), or 0 for SOLVER.IMS_PER_BATCH / devices.")
        accumulate = 0 < micro < per_device
        if accumulate:
            logger.info(f"Gradient accumulation: {per_device} images per device and step in "
                        f"micro-batches of at most {micro} (SOLVER.IMS_PER_DEVICE).")
        amp = cfg.SOLVER.AMP.ENABLED and on_cuda
        if cfg.SOLVER.AMP.ENABLED and not on_cuda:
            logger.warning("SOLVER.AMP.ENABLED is set but the model is not on CUDA; "
                           "training in float32.")
        kwargs = {"precision": getattr(torch, cfg.SOLVER.AMP.PRECISION)} if amp else {}
        if accumulate:
            cls = AMPAccumulatingTrainer if amp else AccumulatingTrainer
            return cls(model, data_loader, optimizer, micro, **kwargs)
        return (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer, **kwargs)

    def build_hooks(self):
        ret = super().build_hooks()
        cfg = self.cfg
        if comm.is_main_process() and cfg.TEST.EVAL_PERIOD > 0 and cfg.TEST.BEST_CHECKPOINT_METRIC:
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
            best = AtomicCheckpointer(self.checkpointer.model, cfg.OUTPUT_DIR, tag_last=False,
                                      extra_data=self.checkpointer.extra_data)
            ret.insert(at, hooks.BestCheckpointer(
                cfg.TEST.EVAL_PERIOD, best, cfg.TEST.BEST_CHECKPOINT_METRIC,
                mode=cfg.TEST.BEST_CHECKPOINT_MODE, file_prefix="model_best"))
        return ret

    def resume_or_load(self, resume=True):
        """detectron2's: resume from OUTPUT_DIR's last_checkpoint (which must fit the model
        exactly), else fine-tune from MODEL.WEIGHTS (which may have another class count, and must
        hold at least half of the model); a checkpoint that does not fit raises
        ``CheckpointError`` (see ``AtomicCheckpointer``)."""
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0:
            for hook in self._hooks:
                if isinstance(hook, hooks.BestCheckpointer):
                    restore_best_metric(hook, os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                                        self.start_iter)

    @classmethod
    def build_model(cls, cfg):
        """DefaultTrainer's, with the network compiled where MODEL.COMPILE is set: training
        and evaluation (``test``, ``--eval-only``) run the model built here."""
        model = super().build_model(cfg)
        compile_configured(cfg, model)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        kind = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "coco")
        if kind not in EVALUATED_OUTPUT:
            raise NotImplementedError(f"dataset {dataset_name!r}: no evaluator for "
                                      f"evaluator_type {kind!r}")
        caps = capabilities(cfg)
        if EVALUATED_OUTPUT[kind] not in caps.outputs(cfg):
            raise ValueError(f"dataset {dataset_name!r} is evaluated on {EVALUATED_OUTPUT[kind]!r}"
                             f", which {caps.name} does not output with this config (it outputs "
                             f"{list(caps.outputs(cfg))}; MODEL.MASK_FORMER.TEST.*_ON switch "
                             "the mask-classification models' outputs).")
        if kind == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        if kind == "coco_panoptic_seg":
            return cls._panoptic_evaluators(cfg, dataset_name, output_folder)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @staticmethod
    def _panoptic_evaluators(cfg, dataset_name, output_folder):
        """PQ / SQ / RQ (all, things, stuff) with COCOPanopticEvaluator; as Mask2Former's
        train_net also mask AP where instance output is on and the dataset has an instance json
        (its ``json_file``, as detectron2's ``coco_2017_val_panoptic``), and mIoU where semantic
        output is on and it has semantic labels (``sem_seg_root``)."""
        meta = MetadataCatalog.get(dataset_name)
        outputs = capabilities(cfg).outputs(cfg)
        evaluators = [COCOPanopticEvaluator(dataset_name, output_dir=output_folder)]
        if "instances" in outputs and getattr(meta, "json_file", None):
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        if "sem_seg" in outputs and getattr(meta, "sem_seg_root", None):
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True,
                                              output_dir=output_folder))
        return DatasetEvaluators(evaluators)

    # INPUT.DATASET_MAPPER_NAME picks the mapper (Mask2Former-style LSJ mappers or detectron2's).
    @classmethod
    def build_train_loader(cls, cfg):
        mapper = build_train_mapper(cfg)
        try:
            loader = build_detection_train_loader(cfg, mapper=SkipUnreadableImages(mapper))
        except AssertionError as err:  # detectron2's DatasetFromList / filtering of empty images
            if "No valid data found" not in str(err):
                raise
            raise DatasetError(
                f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}: no image with an annotation to "
                "train on (images without annotations are skipped while "
                "DATALOADER.FILTER_EMPTY_ANNOTATIONS is True); check the json's 'annotations' "
                "and their 'image_id's.") from None
        check_num_classes(cfg, cfg.DATASETS.TRAIN)  # the datasets are loaded now
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=build_default_mapper(cfg, is_train=False))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)
