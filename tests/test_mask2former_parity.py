"""d2ext's Mask2Former-style head against transformers' Mask2Former (a maintained port of the
official numerics), with weights copied through ``convert_hf_mask2former``: the pixel decoder,
every decoder prediction, the losses and the post-processing agree in fp32."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from transformers import Mask2FormerConfig
from transformers.models.mask2former import modeling_mask2former as hf
from transformers.models.mask2former.image_processing_mask2former import Mask2FormerImageProcessor

from d2ext.modeling.converters import convert_hf_mask2former
from d2ext.modeling.criterion import SetCriterion
from d2ext.modeling.mask_ops import FactoredMaskLogits
from d2ext.modeling.matcher import HungarianMatcher
from d2ext.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from d2ext.modeling.position_encoding import sine_position_embedding
from d2ext.modeling.postprocessing import MaskFormerInference
from d2ext.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder

WIDTH, HEADS, CLASSES, QUERIES = 64, 4, 5, 12
# Odd sizes at every stride (4, 8, 16, 32), as a 100 x 132 image gives after padding to 4.
SIZES = {"p2": (25, 33), "p3": (13, 17), "p4": (7, 9), "p5": (4, 5)}
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}


def hf_config(dec_layers=10, pre_norm=False, enc_layers=2):
    return Mask2FormerConfig(
        feature_size=WIDTH, mask_feature_size=WIDTH, hidden_dim=WIDTH, num_attention_heads=HEADS,
        encoder_feedforward_dim=96, dim_feedforward=128, encoder_layers=enc_layers,
        decoder_layers=dec_layers, pre_norm=pre_norm, num_queries=QUERIES, num_labels=CLASSES,
        dropout=0.0, train_num_points=300, use_auxiliary_loss=True,
        backbone_config={"model_type": "resnet", "depths": [1, 1, 1, 1]})


def perturbed(module, scale=0.1):
    """Random weights far from the reference init (which has zero attention weights and offsets,
    and would hide errors there)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


def copy_weights(hf_modules, d2ext_modules):
    """Load transformers' modules into d2ext's through the converter; nothing may be left over."""
    prefixed = {}
    for prefix, module in hf_modules.items():
        prefixed.update({prefix + k: v for k, v in module.state_dict().items()})
    converted, unused = convert_hf_mask2former(prefixed, "pix.", "dec.")
    assert unused == []
    for prefix, module in d2ext_modules.items():
        own = {k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)}
        module.load_state_dict(own, strict=True)


def build_pair(dec_layers=10, pre_norm=False, enc_in=("p3", "p4", "p5")):
    config = hf_config(dec_layers, pre_norm)
    hf_pixel = hf.Mask2FormerPixelDecoder(config, feature_channels=[WIDTH] * 4)
    torch.nn.init.normal_(hf_pixel.level_embed)  # allocated uninitialised outside from_pretrained
    hf_pixel = perturbed(hf_pixel)
    hf_transformer = perturbed(hf.Mask2FormerTransformerModule(WIDTH, config))
    hf_class = perturbed(torch.nn.Linear(WIDTH, CLASSES + 1))
    pixel = MSDeformAttnPixelDecoder(
        {k: ShapeSpec(channels=WIDTH, stride=s) for k, s in STRIDES.items()},
        transformer_in_features=list(enc_in), conv_dim=WIDTH, mask_dim=WIDTH,
        transformer_enc_layers=2, transformer_dim_feedforward=96, transformer_nheads=HEADS)
    decoder = MultiScaleMaskedTransformerDecoder(
        in_channels=WIDTH, num_classes=CLASSES, hidden_dim=WIDTH, num_queries=QUERIES,
        nheads=HEADS, dim_feedforward=128, dec_layers=dec_layers - 1, pre_norm=pre_norm,
        mask_dim=WIDTH)
    copy_weights({"model.pixel_level_module.decoder.": hf_pixel,
                  "model.transformer_module.": hf_transformer, "class_predictor.": hf_class},
                 {"pix.": pixel, "dec.": decoder})
    return (hf_pixel, hf_transformer, hf_class), (pixel.eval(), decoder.train())


def features(batch=2):
    return {k: torch.randn(batch, WIDTH, *hw) for k, hw in SIZES.items()}


def hf_predictions(hf_modules, feats):
    """transformers' pixel decoder -> transformer module -> every (class, mask) prediction."""
    hf_pixel, hf_transformer, hf_class = hf_modules
    out = hf_pixel([feats[k] for k in ("p2", "p3", "p4", "p5")])
    dec = hf_transformer(list(out.multi_scale_features), out.mask_features,
                         output_hidden_states=True)
    logits = [hf_class(h.transpose(0, 1)) for h in dec.intermediate_hidden_states]
    return out, list(zip(logits, dec.masks_queries_logits))


def d2ext_predictions(modules, feats):
    pixel, decoder = modules
    mask_features, multi_scale = pixel(feats)
    out = decoder(multi_scale, mask_features)
    # In training the decoder gives the masks' factors (FactoredMaskLogits): their product.
    preds = [(a["pred_logits"], a["pred_masks"].dense()) for a in out["aux_outputs"]]
    return (mask_features, multi_scale), preds + [(out["pred_logits"], out["pred_masks"].dense())]


def test_position_encoding_equals_transformers_sine_embedding():
    ref = hf.Mask2FormerSinePositionEmbedding(num_position_features=32, normalize=True)
    for h, w in ((1, 1), (7, 9), (25, 33)):
        shape = torch.Size((2, 64, h, w))
        expected = ref(shape, "cpu", torch.float32)
        torch.testing.assert_close(sine_position_embedding(shape, 32, "cpu", torch.float32),
                                   expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dec_layers, pre_norm", [(10, False), (7, True), (10, True)])
def test_pixel_decoder_and_every_prediction_equal_transformers(dec_layers, pre_norm):
    hf_modules, modules = build_pair(dec_layers, pre_norm)
    feats = features()
    with torch.no_grad():
        hf_pixel_out, hf_preds = hf_predictions(hf_modules, feats)
        (mask_features, multi_scale), preds = d2ext_predictions(modules, feats)
    torch.testing.assert_close(mask_features, hf_pixel_out.mask_features, atol=1e-4, rtol=0)
    assert len(multi_scale) == len(hf_pixel_out.multi_scale_features) == 3
    for ours, theirs in zip(multi_scale, hf_pixel_out.multi_scale_features):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert len(preds) == len(hf_preds) == dec_layers  # deep supervision: every prediction
    for (logits, masks), (hf_logits, hf_masks) in zip(preds, hf_preds):
        torch.testing.assert_close(logits, hf_logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(masks, hf_masks, atol=1e-4, rtol=0)


def test_two_encoder_levels_still_feed_three_scales():
    # Mask2Former always feeds its decoder 3 scales: with an encoder over p4, p5 only, the FPN
    # outputs at 1/8 and 1/4 make up the rest.
    pixel = MSDeformAttnPixelDecoder(
        {k: ShapeSpec(channels=WIDTH, stride=s) for k, s in STRIDES.items()},
        transformer_in_features=["p4", "p5"], conv_dim=WIDTH, mask_dim=WIDTH,
        transformer_enc_layers=1, transformer_nheads=HEADS).eval()
    with torch.no_grad():
        mask_features, multi_scale = pixel(features(1))
    assert [tuple(x.shape[-2:]) for x in multi_scale] == [SIZES["p5"], SIZES["p4"], SIZES["p3"]]
    assert tuple(mask_features.shape[-2:]) == SIZES["p2"]


def test_pixel_decoder_runs_in_float32_under_autocast():
    _, (pixel, decoder) = build_pair(4)
    feats = {k: v.bfloat16() for k, v in features(1).items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = pixel(feats)
        out = decoder.eval()(multi_scale, mask_features)
    assert mask_features.dtype == torch.float32
    assert all(x.dtype == torch.float32 for x in multi_scale)
    assert out["pred_masks"].dtype == torch.bfloat16  # the transformer decoder still autocasts


def targets_for(batch_masks_size, counts):
    h, w = batch_masks_size
    out = []
    for n in counts:
        masks = torch.zeros(n, h, w)
        for i in range(n):
            y, x = torch.randint(0, h // 2, (1,)).item(), torch.randint(0, w // 2, (1,)).item()
            masks[i, y:y + h // 3, x:x + w // 3] = 1
        out.append({"labels": torch.randint(0, CLASSES, (n,)), "masks": masks})
    return out


@pytest.mark.parametrize("counts, factored", [((3, 2), False), ((4, 0), False),
                                               ((3, 2), True), ((4, 0), True)])
def test_loss_dict_equals_transformers_mask2former_loss(counts, factored):
    """``factored``: the criterion gets the masks as the decoder gives them in training
    (embeddings and features, FactoredMaskLogits), transformers' loss their product."""
    config = hf_config(dec_layers=4)
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    reference = hf.Mask2FormerLoss(config, weights)
    criterion = SetCriterion(CLASSES, HungarianMatcher(2.0, 5.0, 5.0, num_points=300),
                             num_points=300)
    batch = len(counts)
    features = torch.randn(batch, 16, 25, 33)
    factors = [FactoredMaskLogits(torch.randn(batch, QUERIES, 16), features) for _ in range(4)]
    preds = [(torch.randn(batch, QUERIES, CLASSES + 1),
              f.dense() if factored else torch.randn(batch, QUERIES, 25, 33) * 3)
             for f in factors]
    targets = targets_for((100, 132), counts)
    torch.manual_seed(5)
    expected = reference(preds[-1][1], preds[-1][0], [t["masks"] for t in targets],
                         [t["labels"] for t in targets],
                         [{"masks_queries_logits": m, "class_queries_logits": c}
                          for c, m in preds[:-1]])
    for key, value in expected.items():
        expected[key] = value * next(w for k, w in weights.items() if k in key)
    torch.manual_seed(5)  # the same point draws, in the same order
    masks = factors if factored else [m for _, m in preds]
    losses = criterion({"pred_logits": preds[-1][0], "pred_masks": masks[-1],
                        "aux_outputs": [{"pred_logits": c, "pred_masks": m}
                                        for (c, _), m in zip(preds[:-1], masks[:-1])]}, targets)
    renamed = {k.replace("loss_cross_entropy", "loss_ce"): v for k, v in expected.items()}
    assert sorted(losses) == sorted(renamed)
    for key, value in renamed.items():
        torch.testing.assert_close(losses[key], value, atol=1e-4, rtol=0, msg=key)


# --- post-processing: d2ext's MaskFormerInference vs transformers' image processor ----------
class Outputs:
    def __init__(self, class_queries_logits, masks_queries_logits):
        self.class_queries_logits = class_queries_logits
        self.masks_queries_logits = masks_queries_logits


SIDE = 384  # transformers resizes mask logits to 384 x 384 first: give them at that size


def postprocess(logits, masks, **kwargs):
    kwargs = {"semantic_on": False, "instance_on": False, "panoptic_on": False, **kwargs}
    return MaskFormerInference(**kwargs)(logits, masks, (SIDE, SIDE), (SIDE, SIDE), (SIDE, SIDE))


def test_semantic_scores_equal_transformers():
    logits, masks = torch.randn(QUERIES, CLASSES + 1), torch.randn(QUERIES, SIDE, SIDE)
    (expected,) = Mask2FormerImageProcessor().post_process_semantic_segmentation(
        Outputs(logits[None], masks[None]), target_sizes=[(SIDE, SIDE)],
        return_segmentation_scores=True)
    sem_seg = postprocess(logits, masks, semantic_on=True)["sem_seg"]
    torch.testing.assert_close(sem_seg, expected.segmentation_scores, atol=1e-5, rtol=0)
    assert torch.equal(sem_seg.argmax(0), expected.segmentation)


def test_instances_equal_transformers():
    logits, masks = torch.randn(QUERIES, CLASSES + 1) * 3, torch.randn(QUERIES, SIDE, SIDE)
    (expected,) = Mask2FormerImageProcessor().post_process_instance_segmentation(
        Outputs(logits[None], masks[None]), threshold=0.0, return_binary_maps=True)
    inst = postprocess(logits, masks, instance_on=True, topk=QUERIES)["instances"]
    # transformers drops empty masks and orders by its own loop; compare by score.
    keep = inst.pred_masks.flatten(1).any(1)
    order = inst.scores[keep].argsort(descending=True)
    ref_scores = torch.tensor([s["score"] for s in expected["segments_info"]])
    ref_order = ref_scores.argsort(descending=True)
    torch.testing.assert_close(inst.scores[keep][order], ref_scores[ref_order], atol=1e-5, rtol=0)
    assert torch.equal(inst.pred_classes[keep][order],
                       torch.tensor([s["label_id"] for s in expected["segments_info"]])[ref_order])
    assert torch.equal(inst.pred_masks[keep][order], expected["segmentation"][ref_order].bool())


def saturated_panoptic_logits():
    """Class scores > 0.5 and masks of logits +-30 that cover every pixel: the inputs on which
    Mask2Former's and transformers' panoptic rules coincide (see ``panoptic_inference``)."""
    logits = torch.full((QUERIES, CLASSES + 1), -5.0)
    labels = torch.arange(QUERIES) % CLASSES
    logits[torch.arange(QUERIES), labels] = 5.0 + torch.rand(QUERIES)
    logits[QUERIES - 1, -1] = 5.5  # a "no object" query: dropped by both
    masks = torch.full((QUERIES, SIDE, SIDE), -30.0)
    cell = SIDE // 4
    for c in range(16):  # a 4 x 4 grid of cells, each owned by one query and overlapping
        q, y, x = c % (QUERIES - 1), (c // 4) * cell, (c % 4) * cell  # its neighbours a little
        masks[q, y: y + cell + cell // 8, x: x + cell + cell // 8] = 30.0
    return logits, masks


def test_panoptic_segments_equal_transformers_where_their_rules_coincide():
    things = {0, 1, 2}
    logits, masks = saturated_panoptic_logits()
    (expected,) = Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        Outputs(logits[None], masks[None]), threshold=0.8, overlap_mask_area_threshold=0.8,
        label_ids_to_fuse=set(range(CLASSES)) - things)
    seg, info = postprocess(logits, masks, panoptic_on=True, thing_ids=things)["panoptic_seg"]
    ref_info = {s["id"]: s["label_id"] for s in expected["segments_info"]}  # fused: repeated
    assert {s["id"]: s["category_id"] for s in info} == ref_info
    assert torch.equal(seg, expected["segmentation"].to(seg.dtype))
    assert len(info) >= 6 and {s["category_id"] for s in info} == set(range(CLASSES))


def test_panoptic_counts_every_pixel_a_query_wins_as_mask2former_does():
    # On a 4 x 5 map, query 0 (the higher score) owns rows 0-1. Query 1's own mask is rows 1-2;
    # it loses row 1 to query 0, wins row 2, and also wins row 3, where its p(mask) is below 0.5
    # but above query 0's. Mask2Former's ratio counts every won pixel: 10 / 10, kept, as the
    # won pixels of its own mask (row 2). Counting only won pixels of its own mask would give
    # 5 / 10 and drop it.
    logits = torch.tensor([[6.0, -5.0, -5.0], [-5.0, 5.0, -5.0]])
    masks = torch.full((2, 4, 5), -10.0)
    masks[0, :2] = 10.0
    masks[1, 1:3] = 10.0
    masks[1, 3] = -1.0
    seg, info = MaskFormerInference(semantic_on=False, instance_on=False, panoptic_on=True,
                                    thing_ids={0, 1}, overlap_threshold=0.8)(
        logits, masks, (4, 5), (4, 5), (4, 5))["panoptic_seg"]
    assert [s["category_id"] for s in info] == [0, 1]
    assert torch.equal(seg, torch.tensor([[1] * 5, [1] * 5, [2] * 5, [0] * 5], dtype=seg.dtype))


def test_initialisation_follows_mask2former():
    pixel = MSDeformAttnPixelDecoder(
        {k: ShapeSpec(channels=WIDTH, stride=s) for k, s in STRIDES.items()},
        transformer_in_features=["p3", "p4", "p5"], conv_dim=256, mask_dim=256,
        transformer_enc_layers=6, transformer_dim_feedforward=1024)
    decoder = MultiScaleMaskedTransformerDecoder(in_channels=128, num_classes=80)
    # Level embeddings ~ N(0, 1) (Mask2Former's normal_), not small.
    assert 0.8 < pixel.level_embed.std() < 1.2
    # xavier_uniform bounds sqrt(6 / (fan_in + fan_out)) reached, not PyTorch's 1 / sqrt(fan_in).
    ffn = pixel.encoder[0].ffn[3].weight  # 1024 -> 256
    assert ffn.abs().max() > 0.9 * (6 / (256 + 1024)) ** 0.5 > 1.1 / 1024 ** 0.5
    out_proj = decoder.layers[0].self_attn.out_proj.weight
    assert out_proj.abs().max() > 0.9 * (6 / 512) ** 0.5 > 1.1 / 256 ** 0.5
    mlp = decoder.layers[0].ffn[3].weight
    assert mlp.abs().max() > 0.9 * (6 / (2048 + 256)) ** 0.5
    # Decoder input projections: c2_xavier_fill (kaiming_uniform a=1, zero bias).
    proj = decoder.input_proj[0]
    assert proj.bias.abs().max() == 0 and proj.weight.abs().max() > 0.9 * (3 / 128) ** 0.5
    # The deformable attention's own init survives the encoder's xavier pass.
    assert pixel.encoder[0].self_attn.attention_weights.weight.abs().max() == 0
