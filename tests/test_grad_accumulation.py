"""Gradient accumulation (SOLVER.IMS_PER_DEVICE): micro-batches give the one big batch's
gradients and logged losses, and multi-process training accumulates."""
import json
import math
import os

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from d2ext.engine import Trainer
from d2ext.engine.accumulation import AccumulatingTrainer, AMPAccumulatingTrainer
from d2ext.solver import add_full_model_gradient_clipping

from helpers import run_tool, tiny_opts

_REAL_RAND = torch.rand


def same_points_rand(*size, generator=None, out=None, **kwargs):
    """``torch.rand`` whose draws depend on the last two sizes only, equal along the leading
    ones (low-discrepancy values instead of random): every image and every matched mask gets
    the same points whether it is drawn in a batch of 8 or of 2, so that the matcher's and the
    point-sampled losses' points (and EoMT's masked-attention draws) are the same in both runs
    without touching how the criterion or the matcher draws them."""
    shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
    if not shape:
        return _REAL_RAND(*size, generator=generator, out=out, **kwargs)
    tail = shape[-2:]
    n = int(torch.tensor(tail).prod())
    values = (torch.arange(1, n + 1, dtype=torch.float64) * 0.6180339887498949) % 1.0
    values = values.reshape(tail).expand(shape)
    return values.to(dtype=kwargs.get("dtype") or torch.float32,
                     device=kwargs.get("device")).contiguous()


def midpoint_uniform_(tensor, low=0.0, high=1.0, *, generator=None):
    """``Tensor.uniform_`` drawing the middle of its range: the DINOv3 ViT's RoPE coordinate
    augmentation in training (transformers' ``pos_embed_rescale``) draws one factor per forward
    pass, which a step in micro-batches draws once per micro-batch (see AccumulatingTrainer)."""
    return tensor.fill_((low + high) / 2)


def deterministic_draws(monkeypatch):
    monkeypatch.setattr(torch, "rand", same_points_rand)
    monkeypatch.setattr(torch.Tensor, "uniform_", midpoint_uniform_)


def synthetic_batch(num_images, size=64, num_classes=4, seed=1):
    """Images of one size (as the LSJ mappers' crops) with 0-3 rectangle instances each (an
    image without any target included)."""
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(num_images):
        image = torch.randint(0, 256, (3, size, size), generator=gen).float()
        n = i % 4
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        boxes = []
        for j in range(n):
            x0, y0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
            w, h = torch.randint(8, size // 2, (2,), generator=gen).tolist()
            masks[j, y0:y0 + h, x0:x0 + w] = True
            boxes.append([x0, y0, x0 + w, y0 + h])
        inst = Instances((size, size), gt_classes=torch.randint(0, num_classes, (n,),
                                                                  generator=gen),
                         gt_masks=BitMasks(masks),
                         gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4)))
        batch.append({"image": image, "height": size, "width": size, "instances": inst})
    return batch


def step_gradients(trainer_cls, model, batch, *args):
    """One trainer step on ``batch`` with a zero LR: the gradients it leaves and the losses it
    logs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = trainer_cls(model, [batch], optimizer, *args)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
        logged = {k: v[0] for k, v in storage.latest().items() if k.startswith(("loss", "total"))}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, logged


@pytest.mark.parametrize("config", ["quickstart_mask2former.yaml", "quickstart_eomt.yaml"])
def test_four_micro_batches_of_two_give_the_gradients_of_one_batch_of_eight(
        tiny_config, monkeypatch, config):
    cfg = tiny_config(config, "MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256")
    model = build_model(cfg)
    deterministic_draws(monkeypatch)  # after the random initialisation
    batch = synthetic_batch(8)
    whole, whole_logged = step_gradients(SimpleTrainer, model, batch)
    accumulated, accumulated_logged = step_gradients(AccumulatingTrainer, model, batch, 2)

    assert whole.keys() == accumulated.keys() and len(whole) > 10
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    assert whole_logged.keys() == accumulated_logged.keys()
    for name, value in whole_logged.items():
        assert accumulated_logged[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # A micro-batch normalised by its own masks would not be the whole batch's.
    assert any(g.abs().max() > 1e-4 for g in whole.values())


class PerImageMeanModel(torch.nn.Module):
    """A loss that is a mean over the batch's images (as detectron2's RPN losses)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        return {"loss": ((x @ self.weight) ** 2).mean()}


def test_per_image_mean_losses_are_scaled_by_their_share_of_the_step():
    batch = [{"x": torch.randn(3)} for _ in range(5)]  # micro-batches of 2, 2, 1
    model = PerImageMeanModel()
    whole, whole_logged = step_gradients(SimpleTrainer, model, batch)
    accumulated, accumulated_logged = step_gradients(AccumulatingTrainer, model, batch, 2)
    torch.testing.assert_close(accumulated["weight"], whole["weight"])
    assert accumulated_logged["total_loss"] == pytest.approx(whole_logged["total_loss"])


def test_full_model_clipping_sees_the_accumulated_gradient():
    batch = [{"x": torch.randn(3) * 10} for _ in range(4)]
    clipped_sgd = add_full_model_gradient_clipping(torch.optim.SGD, max_norm=0.01)
    weights = []
    for trainer_cls, args in ((SimpleTrainer, ()), (AccumulatingTrainer, (1,))):
        model = PerImageMeanModel()
        trainer = trainer_cls(model, [batch], clipped_sgd(model.parameters(), lr=1.0), *args)
        with EventStorage(0):
            trainer.run_step()
        weights.append(model.weight.detach())
    step = weights[1] - PerImageMeanModel().weight.detach()
    assert step.norm() == pytest.approx(0.01, rel=1e-4)  # clipped once, the whole step's norm
    torch.testing.assert_close(weights[1], weights[0])


class CountingScaler(torch.amp.GradScaler):
    def __init__(self):
        super().__init__("cpu")
        self.calls = {"scale": 0, "step": 0, "update": 0}

    def scale(self, outputs):
        self.calls["scale"] += 1
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.calls["step"] += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls["update"] += 1
        return super().update(new_scale)


def test_amp_scales_every_micro_batch_and_steps_once():
    batch = [{"x": torch.randn(3)} for _ in range(4)]
    model = PerImageMeanModel()
    whole, _ = step_gradients(SimpleTrainer, model, batch)
    scaler = CountingScaler()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = AMPAccumulatingTrainer(model, [batch], optimizer, 1, grad_scaler=scaler,
                                     precision=torch.bfloat16)
    with EventStorage(0):
        trainer.run_step()
    assert scaler.calls == {"scale": 4, "step": 1, "update": 1}
    # The scaler unscaled the accumulated gradient (not 2 ** 16 times it; bfloat16 products).
    torch.testing.assert_close(model.weight.grad, whole["weight"], rtol=0.1, atol=1e-2)


def test_the_trainer_accumulates_below_the_device_batch(tiny_config):
    cfg = tiny_config("quickstart_mask2former.yaml", "MODEL.DEVICE", "cpu",
                      "SOLVER.IMS_PER_BATCH", "4", "SOLVER.IMS_PER_DEVICE", "1")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = Trainer._build_step_trainer(cfg, model, [], optimizer, on_cuda=False)
    assert isinstance(step, AccumulatingTrainer) and step.ims_per_device == 1
    cfg.defrost()
    cfg.SOLVER.IMS_PER_DEVICE = 0  # the default: the device's whole batch in one pass
    step = Trainer._build_step_trainer(cfg, model, [], optimizer, on_cuda=False)
    assert not isinstance(step, AccumulatingTrainer)


@pytest.mark.slow
def test_two_process_gloo_training_with_accumulation(synthetic_root, tmp_path):
    opts = tiny_opts(synthetic_root, tmp_path, max_iter=2) + [
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.IMS_PER_DEVICE", "1", "MODEL.DEVICE", "cpu",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"]
    result = run_tool("tools/train_net.py", "--config-file", "configs/quickstart_mask2former.yaml",
                      "--num-gpus", "2", "--dist-url", "auto", *opts)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "log.txt") as f:
        log = f.read()
    assert "World size: 2" in log
    assert "micro-batches of at most 1" in log
    assert os.path.isfile(tmp_path / "model_final.pth")
    with open(tmp_path / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
