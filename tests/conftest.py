"""Shared fixtures. The suite requires detectron2: without it collection fails (by design)."""
import os
import subprocess
import sys

import pytest
import torch

try:
    import detectron2  # noqa: F401
except ImportError as err:  # fail loudly: d2ext is a detectron2 extension
    raise ImportError("d2ext's tests need detectron2, built from its source: see README.md, "
                      "'Install'.") from err

import d2ext  # noqa: F401,E402  (registers everything)
from d2ext.engine import setup_cfg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state: a test's pass or fail must not depend on
    which tests ran before it or on luck."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


def tiny_opts(synthetic_root, output_dir, max_iter=4):
    """Overrides that make configs/quickstart.yaml train in seconds."""
    return ["DATASETS.SYNTHETIC.ROOT", synthetic_root, "DATASETS.SYNTHETIC.NUM_TRAIN", "12",
            "DATASETS.SYNTHETIC.NUM_VAL", "6", "DATASETS.SYNTHETIC.IMAGE_SIZE", "128",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000",
            "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "D2EXT.SAVE_DEMO_IMAGE",
            "False", "OUTPUT_DIR", str(output_dir), "SEED", "1"]


@pytest.fixture
def tiny_cfg(synthetic_root, tmp_path):
    """configs/quickstart.yaml shrunk to a few 128-px images and 4 iterations."""
    return setup_cfg(os.path.join(CONFIGS, "quickstart.yaml"),
                     tiny_opts(synthetic_root, tmp_path / "out"))


def run_tool(*args, timeout=600):
    """Run a tools/ script as a user would; returns the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
