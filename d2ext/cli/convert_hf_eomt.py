"""Convert transformers' EoMT weights into a d2ext checkpoint plus its config.

    python tools/convert_hf_eomt.py SRC DST

SRC: a ``save_pretrained`` directory or hub id of ``EomtForUniversalSegmentation`` (DINOv2
family) or ``EomtDinov3ForUniversalSegmentation``, e.g. tue-mps/coco_panoptic_eomt_large_640.
DST: the checkpoint to write (``NAME.pth``); the config goes beside it as ``NAME.yaml`` and names
the checkpoint in MODEL.WEIGHTS, so ``tools/demo.py --config-file NAME.yaml`` and
``tools/train_net.py --eval-only --config-file NAME.yaml`` run the converted model directly.
For the same input d2ext's class and mask logits equal transformers' (tests/test_eomt.py).
"""
import argparse

from d2ext.modeling.converters import convert_hf_eomt

from . import run_tool


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="save_pretrained directory or hub id of a transformers EoMT")
    parser.add_argument("dst", help="checkpoint to write (.pth); its config: same name, .yaml")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parser.parse_args(argv)
    pth, yaml_path = convert_hf_eomt(args.src, args.dst)
    print(f"wrote {pth}\nwrote {yaml_path}")


def main(argv=None):
    """convert_hf_eomt: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("convert_hf_eomt", _main, argv)
