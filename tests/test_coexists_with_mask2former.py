"""d2ext and Mask2Former in one process: d2ext registers nothing under a name Mask2Former puts
in detectron2's registries (a duplicate name fails detectron2's registration assertion)."""
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

# Mask2Former's registrations in detectron2's shared registries (facebookresearch/Mask2Former).
MASK2FORMER_NAMES = {
    "SEM_SEG_HEADS_REGISTRY": ["MaskFormerHead", "PerPixelBaselineHead",
                               "PerPixelBaselinePlusHead", "BasePixelDecoder",
                               "TransformerEncoderPixelDecoder", "MSDeformAttnPixelDecoder"],
    "META_ARCH_REGISTRY": ["MaskFormer", "VideoMaskFormer"],
    "BACKBONE_REGISTRY": ["D2SwinTransformer"],
}


@pytest.mark.slow
def test_importing_d2ext_after_mask2former_names_are_registered():
    code = textwrap.dedent(f"""
        from detectron2 import modeling
        for registry, names in {MASK2FORMER_NAMES!r}.items():
            for name in names:
                getattr(modeling, registry)._do_register(name, object)
        import d2ext
        from d2ext.config import get_d2ext_cfg
        from d2ext.modeling.pixel_decoder import PIXEL_DECODER_REGISTRY
        # d2ext's configs keep naming their pixel decoder the way Mask2Former's do.
        assert PIXEL_DECODER_REGISTRY.get(
            get_d2ext_cfg().MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME) is not None
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
