"""Convert an EoMT model into a d2ext checkpoint plus its config.

    python tools/convert_eomt.py SRC DST [--dino-weights BASE] [--eomt-config YAML]

SRC is either
- a transformers EoMT (``EomtForUniversalSegmentation`` / ``EomtDinov3ForUniversalSegmentation``
  save_pretrained directory or hub id), or
- an EoMT repository checkpoint (tue-mps/eomt's model zoo ``pytorch_model.bin``, bare or under
  ``state_dict``; a file, a directory holding it, or a hub id given with --dino-weights). The
  zoo's DINOv2 files are absolute; its DINOv3 files are deltas on Meta's DINOv3 and need
  --dino-weights BASE: anything MODEL.DINO.WEIGHTS takes (hub id such as
  facebook/dinov3-vitl16-pretrain-lvd1689m, save_pretrained directory, Meta's .pth). Which one
  a file holds is read from its weights; the wrong combination is refused. Queries, classes,
  blocks with queries and patch size come from the weights; the task, input size and dataset
  from the zoo name in SRC (coco_panoptic_eomt_large_640_dinov3) or --eomt-config (the EoMT
  yaml it was trained with).

DST: the checkpoint to write (``NAME.pth``); the config goes beside it as ``NAME.yaml`` (a
complete config, EoMT's evaluation protocol on) and names the checkpoint in MODEL.WEIGHTS, so
``tools/demo.py --config-file NAME.yaml`` and ``tools/train_net.py --eval-only --config-file
NAME.yaml`` run the converted model directly.
"""
import argparse

from ..modeling.converters import convert_eomt
from . import run_tool


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="transformers EoMT (directory or hub id) or an EoMT "
                                    "repository checkpoint (pytorch_model.bin)")
    parser.add_argument("dst", help="checkpoint to write (.pth); its config: same name, .yaml")
    parser.add_argument("--dino-weights", default="", metavar="BASE",
                        help="the DINOv3 weights a delta checkpoint adds to (hub id, directory "
                             "or .pth, as MODEL.DINO.WEIGHTS)")
    parser.add_argument("--eomt-config", default="", metavar="YAML",
                        help="the EoMT yaml the checkpoint was trained with (task, input size, "
                             "dataset), when SRC's name is not a zoo name")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parser.parse_args(argv)
    pth, yaml_path = convert_eomt(args.src, args.dst, args.dino_weights, args.eomt_config)
    print(f"wrote {pth}\nwrote {yaml_path}")


def main(argv=None):
    """convert_eomt: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("convert_eomt", _main, argv)
