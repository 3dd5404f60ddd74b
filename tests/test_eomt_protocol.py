"""EoMT's evaluation protocol (MODEL.EOMT.TEST.PROTOCOL "eomt"): black-padded squares for
instance/panoptic, averaged overlapping windows for semantic; the zoo configs; large-scale-jitter
crops padded to INPUT.IMAGE_SIZE."""
import glob
import math
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from PIL import Image

from d2ext.data.dataset_mappers import (
    MaskFormerInstanceDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from d2ext.errors import UserError
from d2ext.modeling.meta_arch.eomt import window_starts
from d2ext.modeling.postprocessing import resize_mask_logits, semantic_inference

from helpers import CONFIGS, cpu_config

SIDE = 64  # the protocol's square (INPUT.IMAGE_SIZE) for the tiny model


def _model(*opts):
    torch.manual_seed(0)
    cfg = cpu_config("quickstart_eomt.yaml", "MODEL.EOMT.TEST.PROTOCOL", "eomt",
                     "INPUT.IMAGE_SIZE", str(SIDE), *opts)
    model = build_model(cfg).eval()
    with torch.no_grad():  # a random head near zero hides mistakes: spread the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.attn_mask_probs.zero_()
    seen = []
    predict = model.predict

    def spy(images, **kwargs):
        seen.append(images.clone())
        return predict(images, **kwargs)

    model.predict = spy
    return model, seen


def _image(h, w, seed):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).float()


def test_instance_panoptic_input_is_the_black_padded_square():
    model, seen = _model("MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True")
    mean, std = model.pixel_mean, model.pixel_std
    # 50x64 and 64x23 already fit (the mapper's resize); 40x90 the model fits itself (29x64).
    sizes, outs = [(50, 64), (64, 23), (40, 90)], [(101, 129), (97, 35), (40, 90)]
    inputs = [{"image": _image(h, w, i), "height": oh, "width": ow}
              for i, ((h, w), (oh, ow)) in enumerate(zip(sizes, outs))]
    with torch.no_grad():
        results = model(inputs)
    (batch,) = seen
    assert batch.shape == (3, 3, SIDE, SIDE)
    black = (-mean / std).view(3)
    for net_in, (fh, fw) in zip(batch, [(50, 64), (64, 23), (28, 64)]):
        pad = torch.ones(SIDE, SIDE, dtype=torch.bool)
        pad[:fh, :fw] = False
        assert torch.allclose(net_in[:, pad], black[:, None].expand(3, int(pad.sum())))
        assert net_in[:, :fh, :fw].std() > 0.5  # the image, not padding, is inside
    for net_in, x, (h, w) in zip(batch[:2], inputs[:2], sizes[:2]):
        assert torch.allclose(net_in[:, :h, :w], (x["image"] - mean) / std)
    for r, (oh, ow) in zip(results, outs):
        assert r["instances"].image_size == (oh, ow)
        assert r["instances"].pred_masks.shape[-2:] == (oh, ow)
        assert r["panoptic_seg"][0].shape == (oh, ow)
    # The masks come from that pass, resized back as EoMT's revert does: upsample to the
    # square, crop the image, resize to the output (two passes, not d2ext's one).
    with torch.no_grad():
        masks = model.predict(batch)["pred_masks"]
    for i, ((h, w), (oh, ow)) in enumerate(zip(sizes[:2], outs[:2])):
        ours = resize_mask_logits(masks[i], (SIDE, SIDE), (h, w), (oh, ow), two_pass=True) > 0
        ref = F.interpolate(masks[i:i + 1], (SIDE, SIDE), mode="bilinear")[..., :h, :w]
        ref = F.interpolate(ref, (oh, ow), mode="bilinear")[0] > 0
        assert torch.equal(ours, ref)
        for m in results[i]["instances"].pred_masks:
            assert (ref == m).flatten(1).all(1).any()


def _windows_by_hand(image, side):
    """EoMT's ``window_imgs_semantic`` origins, written out: ceil(L / side) windows, the
    overlap spread evenly."""
    length = max(image.shape[-2:])
    n = math.ceil(length / side)
    overlap = n * side - length
    per = overlap / (n - 1) if overlap > 0 else 0
    return [int(j * (side - per)) for j in range(n)]


@pytest.mark.parametrize("size, out", [((32, 75), (65, 151)), ((70, 32), (70, 32))])
def test_semantic_windows_cover_the_image_and_average_where_they_overlap(size, out):
    side = 32
    model, seen = _model("INPUT.IMAGE_SIZE", str(side), "MODEL.MASK_FORMER.TEST.SEMANTIC_ON",
                         "True", "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False")
    image = _image(*size, seed=3)
    with torch.no_grad():
        (result,) = model([{"image": image, "height": out[0], "width": out[1]}])
    starts = _windows_by_hand(image, side)
    assert len(starts) > 1 and window_starts(max(size), side) == starts
    (crops,) = seen
    assert crops.shape == (len(starts), 3, side, side)
    along_h = size[0] > size[1]
    sums = torch.zeros(4, *size)
    counts = torch.zeros(size)
    normalised = (image - model.pixel_mean) / model.pixel_std
    for crop, start in zip(crops, starts):
        window = (slice(None), slice(start, start + side)) if along_h else \
            (slice(None), slice(None), slice(start, start + side))
        assert torch.allclose(crop, normalised[window])
        with torch.no_grad():
            out_ = model.predict(crop[None])
        masks = F.interpolate(out_["pred_masks"], (side, side), mode="bilinear")[0]
        sums[window] += semantic_inference(out_["pred_logits"][0], masks)
        counts[window[1:]] += 1
    assert counts.min() >= 1 and counts.max() == 2  # the windows cover it and overlap
    want = F.interpolate((sums / counts)[None], out, mode="bilinear")[0]
    assert result["sem_seg"].shape == (4, *out)
    assert torch.allclose(result["sem_seg"], want, atol=1e-5)


def test_window_starts_and_unknown_protocol():
    assert window_starts(75, 32) == [0, 21, 43]
    assert window_starts(32, 32) == [0] and window_starts(64, 32) == [0, 32]
    with pytest.raises(UserError, match="MODEL.EOMT.TEST.PROTOCOL"):
        build_model(cpu_config("quickstart_eomt.yaml", "MODEL.EOMT.TEST.PROTOCOL", "square"))
    with pytest.raises(UserError, match="INPUT.IMAGE_SIZE 100"):
        build_model(cpu_config("quickstart_eomt.yaml", "MODEL.EOMT.TEST.PROTOCOL", "eomt",
                               "INPUT.IMAGE_SIZE", "100"))


def _write(tmp_path, h, w):
    path = str(tmp_path / "img.png")
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("config, pad_value", [("dinov3_eomt.yaml", 0),
                                               ("dinov3_mask2former.yaml", 128)])
def test_lsj_crops_are_padded_to_image_size(tmp_path, config, pad_value):
    cfg = cpu_config(config, "INPUT.IMAGE_SIZE", "96", "INPUT.MIN_SCALE", "0.5",
                     "INPUT.MAX_SCALE", "0.5", "INPUT.RANDOM_FLIP", "none")
    path = _write(tmp_path, 60, 96)  # fitted into 48 x 48: 30 x 48, then padded
    rle = mask_util.encode(np.asfortranarray(np.ones((60, 96), np.uint8)))
    rle["counts"] = rle["counts"].decode()
    anno = {"bbox": [0, 0, 96, 60], "bbox_mode": 1, "category_id": 0, "segmentation": rle}
    out = MaskFormerInstanceDatasetMapper(cfg, is_train=True)(
        {"file_name": path, "height": 60, "width": 96, "annotations": [anno]})
    image, mask = out["image"], out["instances"].gt_masks.tensor[0]
    assert image.shape == (3, 96, 96) and mask.shape == (96, 96)
    assert (image[:, :30, :48] == 200).all() and (image[:, 30:] == pad_value).all()
    assert (image[:, :, 48:] == pad_value).all()
    assert mask[:30, :48].all() and mask.sum() == 30 * 48  # padding is not the object
    cfg.defrost()
    cfg.INPUT.LSJ_PAD = False  # the faster option: each crop keeps its size
    out = MaskFormerInstanceDatasetMapper(cfg, is_train=True)(
        {"file_name": path, "height": 60, "width": 96, "annotations": [anno]})
    assert out["image"].shape == (3, 30, 48)


def test_lsj_semantic_labels_are_padded_with_the_ignore_value(tmp_path):
    cfg = cpu_config("dinov3_eomt.yaml", "INPUT.IMAGE_SIZE", "96", "INPUT.MIN_SCALE", "0.5",
                     "INPUT.MAX_SCALE", "0.5", "INPUT.RANDOM_FLIP", "none")
    label = str(tmp_path / "label.png")
    Image.fromarray(np.full((60, 96), 2, np.uint8)).save(label)
    out = MaskFormerSemanticDatasetMapper(cfg, is_train=True)(
        {"file_name": _write(tmp_path, 60, 96), "sem_seg_file_name": label})
    sem = out["sem_seg"]
    assert sem.shape == (96, 96) and (sem[:30, :48] == 2).all()
    assert (sem[30:] == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE).all()


ZOO = sorted(glob.glob(os.path.join(CONFIGS, "eomt", "*_eomt_*.yaml")))


def test_recipes_and_zoo_configs_evaluate_with_eomts_protocol():
    """The recipes use EoMT's protocol and the test-time resize it needs: the longer side to
    the square for instance/panoptic, the shorter side (uncapped) for semantic windows."""
    names = ["dinov3_eomt.yaml", "dinov3_eomt_base.yaml", "dinov3_eomt_small.yaml"] + ZOO
    assert len(ZOO) == 21  # 14 DINOv2 and 7 DINOv3 models in the zoo
    for name in names:
        cfg = cpu_config(name, "DATASETS.TRAIN", "()")  # ADE20K panoptic: the user registers
        side, test = cfg.INPUT.IMAGE_SIZE, cfg.MODEL.MASK_FORMER.TEST
        assert cfg.MODEL.EOMT.TEST.PROTOCOL == "eomt", name
        assert cfg.INPUT.MIN_SIZE_TEST == side and cfg.INPUT.LSJ_PAD_VALUE == 0, name
        if test.INSTANCE_ON or test.PANOPTIC_ON:
            assert cfg.INPUT.MAX_SIZE_TEST == side, name
        else:
            assert test.SEMANTIC_ON and cfg.INPUT.MAX_SIZE_TEST >= 8 * side, name
    assert cpu_config("quickstart_eomt.yaml").MODEL.EOMT.TEST.PROTOCOL == "any_size"
