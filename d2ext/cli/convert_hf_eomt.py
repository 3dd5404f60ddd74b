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
import sys


from d2ext.modeling.converters import EomtConversionError, convert_hf_eomt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="save_pretrained directory or hub id of a transformers EoMT")
    parser.add_argument("dst", help="checkpoint to write (.pth); its config: same name, .yaml")
    args = parser.parse_args(argv)
    try:
        pth, yaml_path = convert_hf_eomt(args.src, args.dst)
    except EomtConversionError as err:
        sys.exit(f"convert_hf_eomt: {err}")
    print(f"wrote {pth}\nwrote {yaml_path}")
