"""EoMT (encoder-only mode): parity with transformers through the converter, any input size,
training, checkpoints."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

from d2ext.engine import setup_cfg
from d2ext.modeling.converters import EomtConversionError, convert_hf_eomt
from d2ext.modeling.meta_arch.eomt import mask_annealing_probs

from helpers import cpu_config

SIZE = 64  # the square size the tiny transformers models are configured for
TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_queries=6,
            num_blocks=2, image_size=SIZE, num_labels=3)


def _hf_eomt(family):
    from transformers import (
        EomtConfig,
        EomtDinov3Config,
        EomtDinov3ForUniversalSegmentation,
        EomtForUniversalSegmentation,
    )

    torch.manual_seed(0)
    if family == "dinov2":  # matches DINO_ARCHS["dinov2_tiny14_reg"], run at patch 16
        return EomtForUniversalSegmentation(EomtConfig(**TINY, mlp_ratio=2)).eval()
    return EomtDinov3ForUniversalSegmentation(
        EomtDinov3Config(**TINY, intermediate_size=128)).eval()


def _converted(hf, tmp_path):
    hf.save_pretrained(tmp_path / "hf")
    pth, yaml_path = convert_hf_eomt(str(tmp_path / "hf"), str(tmp_path / "d2" / "eomt.pth"))
    cfg = setup_cfg(yaml_path, ["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.TEST.SEMANTIC_ON",
                                "True"])
    assert cfg.MODEL.WEIGHTS == pth
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_parity_with_transformers(family, tmp_path):
    """Same weights, same input: class and mask logits and sem_seg equal transformers'
    (masked attention on in the last block, off in the one before, as mid-annealing)."""
    from transformers import EomtImageProcessor

    hf = _hf_eomt(family)
    hf.attn_mask_probs.copy_(torch.tensor([0.0, 1.0]))
    model = _converted(hf, tmp_path)
    assert model.attn_mask_probs.tolist() == [0.0, 1.0]
    images = torch.rand(2, 3, SIZE, SIZE) * 255
    pixel_values = (images - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        ref = hf(pixel_values=pixel_values)
        ours = model.predict(pixel_values)
        results = model([{"image": im, "height": SIZE, "width": SIZE} for im in images])
    assert ours["pred_masks"].shape == ref.masks_queries_logits.shape == (2, 6, 16, 16)
    assert (ours["pred_masks"] - ref.masks_queries_logits).abs().max() <= 1e-4
    assert (ours["pred_logits"] - ref.class_queries_logits).abs().max() <= 1e-4
    processor = EomtImageProcessor(size={"shortest_edge": SIZE, "longest_edge": SIZE})
    ref_sem = processor.post_process_semantic_segmentation(
        ref, target_sizes=[(SIZE, SIZE)] * 2, return_segmentation_scores=True)
    for res, sem in zip(results, ref_sem):
        assert res["sem_seg"].shape == (3, SIZE, SIZE)
        assert (res["sem_seg"] - sem["segmentation_scores"]).abs().max() <= 1e-4
        assert isinstance(res["instances"], Instances)
    # A trained model (masks annealed away) runs as a plain ViT; still equal.
    hf.attn_mask_probs.zero_()
    model.attn_mask_probs.zero_()
    with torch.no_grad():
        diff = hf(pixel_values=pixel_values).masks_queries_logits - \
            model.predict(pixel_values)["pred_masks"]
    assert diff.abs().max() <= 1e-4


def test_converter_errors_say_what_to_do(tmp_path, capsys):
    with pytest.raises(EomtConversionError, match="save_pretrained"):
        convert_hf_eomt(str(tmp_path / "missing"), str(tmp_path / "out.pth"))
    from d2ext.cli import convert_hf_eomt as tool

    assert tool.main([str(tmp_path / "no-such-model"), str(tmp_path / "out.pth")]) == 1
    message = capsys.readouterr().err.strip()  # a message, not a traceback
    assert "hf download" in message and len(message.splitlines()) == 1


def test_non_square_input_no_square_padding():
    """96x160 runs as a 6x10 patch grid with 1/4-resolution masks; 90x150 is padded to the
    patch multiple only; outputs come back at the requested size."""
    cfg = cpu_config("quickstart_eomt.yaml", "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True")
    model = build_model(cfg).eval()
    seen = []
    model.vit.embeddings.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    with torch.no_grad():
        out = model.predict(torch.randn(1, 3, 96, 160))
        results = model([{"image": torch.rand(3, 90, 150) * 255, "height": 45, "width": 75}])
    assert out["pred_masks"].shape == (1, 20, 24, 40)
    assert out["pred_logits"].shape == (1, 20, 5)
    assert seen == [5 + 6 * 10, 5 + 6 * 10]  # CLS + 4 registers + patches: no square padding
    inst = results[0]["instances"]
    assert inst.image_size == (45, 75) and inst.pred_masks.shape[-2:] == (45, 75)
    assert results[0]["sem_seg"].shape == (4, 45, 75)


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        image = torch.rand(3, size, size, generator=g) * 60
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, 8:30, 10:40] = True
        masks[1, 36:60, 20:56] = True
        image[:, masks[0]] += 150
        image[1, masks[1]] += 180
        inst = Instances((size, size))
        inst.gt_classes = torch.tensor([1, 3])
        inst.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": inst})
    return batch


@pytest.mark.slow
def test_training_loss_falls_and_masks_anneal():
    torch.manual_seed(0)
    cfg = cpu_config("quickstart_eomt.yaml", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256")
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, totals = _batch(), []
    with EventStorage(0) as storage:
        for it in range(12):
            storage.iter = it * 30  # walk the annealing schedule (150..350) quickly
            losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    # deep supervision: one set of losses per block with queries + the final one
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_1"} <= set(losses)
    probs = model.attn_mask_probs.tolist()  # at iteration 330: block 1 done, block 2 annealing
    assert probs[0] == 0.0 and 0.0 < probs[1] < 1.0
    assert sum(totals[-3:]) < 0.7 * sum(totals[:3])


def test_mask_annealing_schedule():
    starts, ends = (10, 20), (20, 30)
    assert mask_annealing_probs(0, starts, ends) == [1.0, 1.0]
    mid = mask_annealing_probs(15, starts, ends)
    assert 0 < mid[0] < 1 and mid[1] == 1.0
    assert mask_annealing_probs(30, starts, ends) == [0.0, 0.0]


def test_checkpoint_round_trip(tmp_path):
    cfg = cpu_config("quickstart_eomt.yaml")
    model = build_model(cfg).eval()
    model.attn_mask_probs.copy_(torch.tensor([0.0, 0.5]))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("eomt")
    torch.manual_seed(123)
    other = build_model(cfg).eval()
    DetectionCheckpointer(other).load(str(tmp_path / "eomt.pth"))
    assert other.attn_mask_probs.tolist() == [0.0, 0.5]
    other.attn_mask_probs.zero_()
    model.attn_mask_probs.zero_()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        a, b = model.predict(x), other.predict(x)
    assert torch.equal(a["pred_masks"], b["pred_masks"])
    assert torch.equal(a["pred_logits"], b["pred_logits"])
