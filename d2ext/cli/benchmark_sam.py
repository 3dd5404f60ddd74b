"""Per-image cost of the SAM-prompt pipeline against its floor, DINO backbone + SAM encoder.

  python tools/benchmark_sam.py                       # DINOv3 ViT-S/16 + SAM ViT-B, 640x853
  python tools/benchmark_sam.py --methods grid --reps 5 --height 480 --width 640

Random weights (no checkpoint is needed: cost does not depend on the weights); 64 prompts per
image (grid 8x8; 64 attention points). Each timed pass runs the whole model on one image while
the DINO backbone and the SAM image encoder are timed inside it, so the ratio
total / (DINO + SAM encoder) and the share of prompt generation, decoding, matching and dedup
come from the same passes. Prints medians over --reps passes.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from ..errors import UserError
from ..modeling.backbone import DinoViTBackbone
from ..modeling.meta_arch import DinoSamPrompt
from ..modeling.sam_prompt import build_sam_model
from ..utils.timing import PartTimer
from . import run_tool


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dino-arch", default="dinov3_vits16")
    parser.add_argument("--sam-type", default="vit_b")
    parser.add_argument("--height", type=int, default=640, help="image height seen by DINO")
    parser.add_argument("--width", type=int, default=853)
    parser.add_argument("--methods", nargs="+", default=["grid", "attention"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    backbone = DinoViTBackbone(args.dino_arch)
    sam = build_sam_model(args.sam_type)
    timer = PartTimer(backbone, {"dino": backbone, "sam encoder": sam.image_encoder}, {})
    side = int(round(args.prompts ** 0.5))
    if side * side != args.prompts:
        raise UserError("--prompts must be a square number (grid prompts), e.g. 64")
    image = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (3, args.height, args.width)),
                            dtype=torch.float32, device=args.device)
    print(f"device {args.device}, threads {torch.get_num_threads()}, DINO {args.dino_arch} at "
          f"{args.height}x{args.width}, SAM {args.sam_type} at {sam.image_encoder.img_size}, "
          f"{args.prompts} prompts, median of {args.reps}")
    print(f"{'method':<11}{'prompts':>8}{'DINO ms':>10}{'SAM enc ms':>12}{'floor ms':>10}"
          f"{'total ms':>10}{'ratio':>7}{'rest %':>8}")
    for method in args.methods:
        model = DinoSamPrompt(backbone=backbone, sam=sam, method=method, num_segments=args.prompts,
                              points_per_side=side, score_threshold=-1.0).to(args.device)
        totals, dinos, encoders = [], [], []
        with torch.inference_mode():
            prompts = len(model.make_prompts(image)[0])
            for rep in range(args.warmup + args.reps):
                timer.times.clear()
                start = time.perf_counter()
                model([{"image": image}])
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if rep >= args.warmup:
                    totals.append(time.perf_counter() - start)
                    dinos.append(timer.times.get("dino", 0.0) / 1000)
                    encoders.append(timer.times["sam encoder"] / 1000)
        total, dino, encoder = (statistics.median(v) * 1000 for v in (totals, dinos, encoders))
        floors = [d + e for d, e in zip(dinos, encoders)]
        ratio = statistics.median(t / f for t, f in zip(totals, floors))
        print(f"{method:<11}{prompts:>8}{dino:>10.0f}{encoder:>12.0f}{dino + encoder:>10.0f}"
              f"{total:>10.0f}{ratio:>7.3f}{100 * (ratio - 1):>8.1f}")


def main(argv=None):
    """benchmark_sam: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("benchmark_sam", _main, argv)
