#!/usr/bin/env python
"""Inference speed of a d2ext config, with the peers measured in the same run.

  python tools/benchmark.py --config-file configs/dinov3_mask2former.yaml --peers
  python tools/benchmark.py --config-file configs/dinov3_maskrcnn.yaml --size 1024 --reps 3

Random weights (MODEL.WEIGHTS and MODEL.DINO.WEIGHTS are ignored), one random RGB square image
of --size pixels, eval mode under torch.inference_mode. Reported: median latency of --reps timed
passes after a warm-up (image in -> detectron2 outputs), images/s at --batch, peak process
memory, a per-part breakdown for models that expose their parts (backbone ViT, neck, pixel
decoder, transformer decoder, post-processing), and with --peers, in the same process and at
the same ViT shape (width, depth, heads, registers of MODEL.DINO.ARCH, 100 queries):

  floor    the bare transformers ViT: no head can run faster
  hf_eomt  transformers' EomtDinov3ForUniversalSegmentation, masked attention off
           (the state a trained EoMT is in), last 4 blocks
  hf_m2f   transformers' Mask2FormerForUniversalSegmentation with a DINOv3 backbone (the
           'Mask2Former with DINOv3' reference approach: every level at 1/16, so masks at 1/16)

The machine's load changes absolute times: compare the ratios printed by one run.
"""
import argparse
import resource
import statistics
import sys
import time

import torch

from d2ext.engine import setup_cfg
from d2ext.modeling.backbone import DINO_ARCHS


def median_ms(fn, reps):
    """Median wall time of ``reps`` calls after one warm-up, in ms."""
    with torch.inference_mode():
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def peak_memory_mb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_model(args):
    from detectron2.modeling import build_model as d2_build_model

    opts = list(args.opts) + ["MODEL.WEIGHTS", "", "MODEL.DINO.WEIGHTS", ""]
    if args.device:
        opts += ["MODEL.DEVICE", args.device]
    cfg = setup_cfg(args.config_file, opts)
    return cfg, d2_build_model(cfg).eval()


def part_times(model, batch, reps):
    """{part: ms} for models with extract_features / decode_pixels / decode_queries /
    postprocess (DinoMask2Former); the backbone is split into the ViT and its neck."""
    if not all(hasattr(model, m) for m in ("extract_features", "decode_pixels",
                                           "decode_queries", "postprocess")):
        return {}
    with torch.inference_mode():
        images = model.preprocess_image(batch)
        x = images.tensor
        features = model.extract_features(x)
        mask_features, multi_scale = model.decode_pixels(features)
        outputs = model.decode_queries(multi_scale, mask_features)
    parts = {"preprocess": median_ms(lambda: model.preprocess_image(batch), reps)}
    backbone = model.extract_features
    vit = getattr(model.backbone, "net", None)
    parts["backbone (ViT)"] = median_ms(lambda: (vit or model.backbone)(x), reps)
    if vit is not None:
        parts["neck"] = max(0.0, median_ms(lambda: backbone(x), reps) - parts["backbone (ViT)"])
    parts["pixel decoder"] = median_ms(lambda: model.decode_pixels(features), reps)
    parts["transformer decoder"] = median_ms(
        lambda: model.decode_queries(multi_scale, mask_features), reps)
    parts["post-processing"] = median_ms(lambda: model.postprocess(outputs, batch, images), reps)
    return parts


def peer_models(arch_name, size, num_classes):
    """(name, module, input kwargs builder) for the transformers peers at the d2ext ViT shape."""
    from transformers import (DINOv3ViTConfig, DINOv3ViTModel, EomtDinov3Config,
                              EomtDinov3ForUniversalSegmentation, Mask2FormerConfig,
                              Mask2FormerForUniversalSegmentation)

    arch = DINO_ARCHS[arch_name]
    vit = dict(hidden_size=arch.width, num_hidden_layers=arch.depth,
               num_attention_heads=arch.heads, intermediate_size=arch.mlp, patch_size=16,
               num_register_tokens=4)
    floor = DINOv3ViTModel(DINOv3ViTConfig(**vit, image_size=size)).eval()
    eomt = EomtDinov3ForUniversalSegmentation(EomtDinov3Config(
        **vit, num_queries=100, num_blocks=4, num_labels=num_classes, image_size=size)).eval()
    eomt.attn_mask_probs.zero_()
    quarter = [max(1, arch.depth * i // 4) for i in range(1, 5)]
    m2f = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=DINOv3ViTConfig(**vit, image_size=size, out_indices=quarter),
        num_labels=num_classes, num_queries=100)).eval()
    return {"floor": floor, "hf_eomt": eomt, "hf_m2f": m2f}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2, help="batch size for images/s")
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--no-parts", action="store_true", help="skip the per-part breakdown")
    parser.add_argument("--device", default="", help="overrides MODEL.DEVICE")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cfg, model = build_model(args)
    device = str(model.device) if hasattr(model, "device") else cfg.MODEL.DEVICE
    image = torch.rand(3, args.size, args.size, device=device) * 255
    one = [{"image": image, "height": args.size, "width": args.size}]
    rows = {"d2ext": median_ms(lambda: model(one), args.reps)}
    batched = median_ms(lambda: model(one * args.batch), max(1, args.reps // 2))
    memory = peak_memory_mb(device)
    parts = {} if args.no_parts else part_times(model, one, args.reps)

    print(f"config {args.config_file} ({cfg.MODEL.META_ARCHITECTURE}, {cfg.MODEL.DINO.ARCH}), "
          f"{args.size}x{args.size}, device {device}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}, median of {args.reps}")
    print(f"d2ext latency: {rows['d2ext']:.0f} ms/image (image in -> outputs out)")
    print(f"d2ext throughput: {1000 * args.batch / batched:.2f} images/s at batch {args.batch}")
    print(f"peak memory: {memory:.0f} MiB ({'CUDA allocated' if device.startswith('cuda') else 'process RSS'})")
    if parts:
        total = sum(parts.values())
        print("per part:")
        for name, ms in parts.items():
            print(f"  {name:<20} {ms:8.1f} ms  {100 * ms / total:5.1f} %")
    if args.peers:
        x = image[None] / 255
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        for name, peer in peer_models(cfg.MODEL.DINO.ARCH, args.size, num_classes).items():
            peer = peer.to(device)
            rows[name] = median_ms(lambda: peer(pixel_values=x), args.reps)
            del peer
        floor = rows["floor"]
        print("ratios (same run):")
        for name, ms in rows.items():
            extra = "".join(f", {ms / rows[p]:.2f} x {p}" for p in ("hf_eomt", "hf_m2f")
                            if p != name and name == "d2ext")
            print(f"  {name:<8} {ms:8.0f} ms  {ms / floor:5.2f} x floor{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
