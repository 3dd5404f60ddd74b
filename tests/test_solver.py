"""The recipes' optimizer pieces: whole-model gradient clipping (Mask2Former), EoMT's two-stage
warm-up and layer-wise LR decay, no weight decay on embeddings."""
import os

import pytest
import torch
from detectron2.modeling import build_model

from d2ext.engine import setup_cfg
from d2ext.solver import (
    add_full_model_gradient_clipping,
    build_lr_scheduler,
    build_optimizer,
    two_stage_warmup_poly,
)

from helpers import CONFIGS, make_cfg


def test_full_model_clipping_scales_all_gradients_together():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    opt = add_full_model_gradient_clipping(torch.optim.SGD, max_norm=0.01)([a, b], lr=1.0)
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    total = (9 * 3 + 16 * 4) ** 0.5
    opt.step()
    # One factor for every parameter (per-parameter clipping would give each norm 0.01).
    torch.testing.assert_close(-a.data, torch.full((3,), 3.0 * 0.01 / total))
    torch.testing.assert_close(-b.data, torch.full((4,), 4.0 * 0.01 / total))


def test_two_stage_warmup_poly_matches_eomt_schedule():
    head = two_stage_warmup_poly(2000, 3000, 10000, 0.9, backbone=False)
    vit = two_stage_warmup_poly(2000, 3000, 10000, 0.9, backbone=True)
    assert head(0) == 0 and head(1000) == 0.5 and head(2000) == 1.0
    assert vit(1999) == 0 and vit(3500) == 0.5 and vit(5000) == 1.0
    assert head(6000) == pytest.approx((1 - 4000 / 8000) ** 0.9)
    assert vit(7500) == pytest.approx((1 - 2500 / 5000) ** 0.9)
    assert head(10000) == 0 and vit(10000) == 0


# configs/dinov3_eomt.yaml on the CPU with a tiny random ViT and two blocks of four queries.
TINY_EOMT = ["MODEL.DEVICE", "cpu", "MODEL.DINO.ARCH", "dinov3_tiny16", "MODEL.DINO.WEIGHTS", "",
             "MODEL.EOMT.NUM_BLOCKS", "2", "MODEL.EOMT.NUM_QUERIES", "4",
             "MODEL.EOMT.ANNEAL_START_ITERS", "[]", "MODEL.EOMT.ANNEAL_END_ITERS", "[]"]


def test_eomt_recipe_optimizer_and_schedule(tmp_path):
    cfg = make_cfg("dinov3_eomt.yaml", *TINY_EOMT, "OUTPUT_DIR", str(tmp_path))
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    depth = model.backbone.num_blocks  # 4: blocks 2, 3 hold the queries
    lr_of = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
    blocks = model.backbone.blocks
    base = cfg.SOLVER.BASE_LR
    assert lr_of[id(next(blocks[0].parameters()))] == pytest.approx(base * 0.8 ** (depth - 1))
    assert lr_of[id(next(blocks[1].parameters()))] == pytest.approx(base * 0.8 ** (depth - 2))
    assert lr_of[id(next(blocks[2].parameters()))] == pytest.approx(base)
    assert lr_of[id(model.query.weight)] == pytest.approx(base)
    # EoMT decays the queries too (d2ext still spares the ViT's tokens and position
    # embeddings); the ViT waits at LR 0 while the head warms up.
    assert all(g["weight_decay"] == 0.05 for g in optimizer.param_groups
               if any(p is model.query.weight for p in g["params"]))
    for _ in range(1000):
        optimizer.step()
        scheduler.step()
    lrs = {g["backbone"]: g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
    assert lrs[False] == pytest.approx(0.5) and lrs[True] == 0.0


def test_mask2former_recipe_clips_the_whole_model_and_spares_embeddings(tmp_path):
    cfg = setup_cfg(os.path.join(CONFIGS, "dinov3_mask2former.yaml"), [
        "MODEL.DEVICE", "cpu", "MODEL.DINO.ARCH", "dinov3_tiny16", "MODEL.DINO.WEIGHTS", "",
        "OUTPUT_DIR", str(tmp_path)])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer).__name__ == "AdamWWithFullModelGradientClipping"
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert group_of[id(model.transformer_decoder.query_feat.weight)]["weight_decay"] == 0.0
    vit_param = next(model.backbone.net.parameters())
    assert group_of[id(vit_param)]["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * 0.1)
    assert group_of[id(model.transformer_decoder.class_embed.weight)]["weight_decay"] == 0.05
