"""Images/s of d2ext's semantic segmentation configs next to the bare DINOv3 backbone, on CPU.

Every model has random weights and the real ViT-S/16 DINOv3 shape (MODEL.DINO.WEIGHTS ""); one
RGB image of --size x --size; timed passes are interleaved across the models (each round in a
new random order), so the shared machine's noise hits them alike; the figure is the median over
--reps rounds after one warm-up, under torch.inference_mode. "head overhead" is the time over
the backbone's: what the head, the padding and the upsampling to the image add.

  floor        transformers' DINOv3ViTModel alone (as in the peers' benchmark)
  backbone     d2ext's DinoViTBackbone with the config's OUT_BLOCKS (the last four)
  semseg_*     the whole model of a config (DinoSemanticSegmentor): normalisation, padding,
               backbone, head, logits resampled to the image size
  write_*      filling a fresh float32 tensor of a config's output shape (classes x size x size)
               with zeros: the least any model returning those logits pays (mostly the kernel
               mapping fresh pages); shown for scale, its "head overhead" is the write alone

  python tools/benchmark_semseg.py --size 640 --reps 7
"""
import argparse
import os

import torch

from ..engine import setup_cfg
from ..modeling import DinoViTBackbone
from ..utils.timing import interleaved_medians
from . import run_tool

# The repository's configs/ (this file is d2ext/cli/benchmark_semseg.py).
_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")
CONFIGS = {"semseg_person_2cls": os.path.join(_CONFIG_DIR, "dinov3_semseg_person.yaml"),
           "semseg_ade20k_150cls": os.path.join(_CONFIG_DIR, "dinov3_semseg_ade20k.yaml")}


def semseg_model(config_file, size):
    from detectron2.modeling import build_model

    cfg = setup_cfg(config_file, ["MODEL.DINO.WEIGHTS", "", "MODEL.DEVICE", "cpu",
                                  "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size])
    return build_model(cfg).eval(), cfg


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8)
    batch = [{"image": image, "height": args.size, "width": args.size}]
    x = (image.float()[None] - 128.0) / 64.0

    models, writes = {}, {}
    for name, config_file in CONFIGS.items():
        model, cfg = semseg_model(config_file, args.size)
        models[name] = lambda m=model: m(batch)
        shape = (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, args.size, args.size)
        writes["write_" + name.split("_")[-1]] = lambda s=shape: torch.zeros(s)
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    arch = DinoViTBackbone(arch=cfg.MODEL.DINO.ARCH).arch
    floor = DINOv3ViTModel(DINOv3ViTConfig(
        hidden_size=arch.width, num_hidden_layers=arch.depth, num_attention_heads=arch.heads,
        intermediate_size=arch.mlp, patch_size=arch.patch, num_register_tokens=4)).eval()
    backbone = DinoViTBackbone(arch=cfg.MODEL.DINO.ARCH,
                               out_blocks=tuple(cfg.MODEL.DINO.OUT_BLOCKS)).eval()
    models = {"floor": lambda: floor(pixel_values=x), "backbone": lambda: backbone(x), **models,
              **writes}

    ms = interleaved_medians(models, args.reps, "cpu")
    median = {name: t / 1000 for name, t in ms.items() if name not in writes}
    writes_median = {name: t / 1000 for name, t in ms.items() if name in writes}
    print(f"{cfg.MODEL.DINO.ARCH} random weights, {args.size}x{args.size}, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.reps}")
    for name, seconds in median.items():
        print(f"{name:22s} {1000 * seconds:7.0f} ms  {1 / seconds:6.2f} img/s  "
              f"{seconds / median['floor']:.3f} x floor  head overhead "
              f"{100 * (seconds / median['backbone'] - 1):+.1f}%")
    for name, seconds in writes_median.items():
        print(f"{name:22s} {1000 * seconds:7.0f} ms  (= {100 * seconds / median['backbone']:.1f}% "
              "of the backbone)")


def main(argv=None):
    """benchmark_semseg: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("benchmark_semseg", _main, argv)
