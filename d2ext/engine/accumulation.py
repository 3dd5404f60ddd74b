"""Gradient accumulation: one optimizer step of SOLVER.IMS_PER_BATCH images, run on each device
as micro-batches of SOLVER.IMS_PER_DEVICE images, so that a recipe's batch trains on devices too
small to hold it in one pass."""
import contextlib
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

from ..modeling.meta_arch import capabilities


class AccumulatingTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` whose step splits the data loader's batch (this device's
    SOLVER.IMS_PER_BATCH / devices images, one aspect-ratio group) into micro-batches of at most
    ``ims_per_device`` images, runs forward and backward on each, and then steps the optimizer
    once: the LR schedule, iteration count, checkpoint and evaluation periods and gradient
    clipping (inside ``optimizer.step``) stay per optimizer step.

    The loader stays detectron2's, built for the whole batch: the step's targets must be known
    before its first micro-batch (see below), and IMS_PER_BATCH keeps its meaning.

    Gradients are the whole batch's where the model says how (its capabilities'
    ``step_loss_context``): the set criterion of the mask-classification models is normalised
    by the whole step's target masks (counted over every micro-batch and every process, once per
    step) and its class cross-entropy by the whole step's query weights, and each micro-batch's
    loss adds unscaled. Other models' losses are taken as per-image means and each micro-batch's
    loss is scaled by its share of the step's images; for detectron2's Mask R-CNN this is exact
    for the RPN losses (normalised per image), for the box head where every image samples
    ROI_HEADS.BATCH_SIZE_PER_IMAGE proposals (the usual case), and an approximation for the mask
    loss (a mean over the batch's foreground proposals, whose count differs per image).

    The micro-batches are padded each to its own largest image: where the images of a batch
    differ in size (not with the LSJ mappers' fixed crop), the padding, and so what padding
    changes (GroupNorm statistics), differs from the one-pass batch's.

    A random draw made once per forward pass is made once per micro-batch instead of once per
    step: the DINOv3 ViT's RoPE coordinate rescaling in training (transformers'
    ``pos_embed_rescale``), one factor per pass, is the one in d2ext's models; the point samples
    of the matcher and the mask losses are drawn per image and per mask as before (other
    values from the same distribution).

    DDP synchronises gradients on the last micro-batch only (``no_sync`` before). The logged
    losses are the sums over the micro-batches of what each added: the step's losses.
    """

    def __init__(self, model, data_loader, optimizer, ims_per_device, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.ims_per_device = ims_per_device

    def _autocast(self):
        return contextlib.nullcontext()

    def _backward(self, loss):
        loss.backward()

    def _optimizer_step(self):
        self.optimizer.step()

    def run_step(self):
        assert self.model.training, "[AccumulatingTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        model = getattr(self.model, "module", self.model)
        step_context = capabilities(model).step_loss_context(model, data)
        micro_batches = [data[i:i + self.ims_per_device]
                         for i in range(0, len(data), self.ims_per_device)]
        self.optimizer.zero_grad()
        loss_dict = {}
        with step_context or contextlib.nullcontext():
            for i, batch in enumerate(micro_batches):
                scale = 1.0 if step_context is not None else len(batch) / len(data)
                last = i == len(micro_batches) - 1
                no_sync = (self.model.no_sync() if isinstance(self.model, DistributedDataParallel)
                           and not last else contextlib.nullcontext())
                with no_sync:
                    with self._autocast():
                        losses = self.model(batch)
                        if isinstance(losses, torch.Tensor):
                            losses = {"total_loss": losses}
                        losses = {k: v * scale for k, v in losses.items()}
                        total = sum(losses.values())
                    self._backward(total)
                for k, v in losses.items():
                    loss_dict[k] = loss_dict[k] + v.detach() if k in loss_dict else v.detach()

        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time,
                                            iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self._optimizer_step()


class AMPAccumulatingTrainer(AccumulatingTrainer, AMPTrainer):
    """``AccumulatingTrainer`` with detectron2's ``AMPTrainer``'s mixed precision: every
    micro-batch under autocast and scaled by the same loss scale; the scaler unscales the
    accumulated gradients, skips the step on an overflow and updates its scale once per
    optimizer step. Its state (the scaler's) is ``AMPTrainer``'s."""

    def _autocast(self):
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=self.precision)

    def _backward(self, loss):
        self.grad_scaler.scale(loss).backward()

    def _optimizer_step(self):
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
