"""Shared fixtures. The suite requires detectron2: without it collection fails (by design).

The plain functions behind them, and the other shared helpers, are in helpers.py."""
import logging

import pytest
import torch

try:
    import detectron2  # noqa: F401
except ImportError as err:  # fail loudly: d2ext is a detectron2 extension
    raise ImportError("d2ext's tests need detectron2, built from its source: see README.md, "
                      "'Install'.") from err

import d2ext  # noqa: F401,E402  (registers everything)

import helpers  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state: a test's pass or fail must not depend on
    which tests ran before it or on luck."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _loggers_restored():
    """Tools set up detectron2's and d2ext's loggers (handlers on streams that a test's capture
    closes afterwards, no propagation to the root logger): each test starts with d2ext's records
    reaching caplog and leaves the loggers as it found them, so whether a test sees their records
    does not depend on which tests ran before it."""
    names = ("d2ext", "detectron2", "fvcore")
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                    logging.getLogger(name).level) for name in names}
    logging.getLogger("d2ext").propagate = True  # caplog listens at the root logger
    yield
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def tiny_config(synthetic_root, tmp_path):
    """A factory: ``tiny_config(name, *opts, max_iter=4, output_dir=None)`` is configs/<name>
    on the session's tiny synthetic dataset (helpers.tiny_opts: a few 128-px images,
    ``max_iter`` iterations, OUTPUT_DIR ``output_dir`` or tmp_path / "out"), then ``opts``."""
    def build(name, *opts, max_iter=4, output_dir=None):
        output_dir = tmp_path / "out" if output_dir is None else output_dir
        return helpers.tiny_config(name, synthetic_root, output_dir, *opts, max_iter=max_iter)
    return build


@pytest.fixture
def tiny_cfg(tiny_config):
    """configs/quickstart.yaml shrunk to a few 128-px images and 4 iterations."""
    return tiny_config("quickstart.yaml")


@pytest.fixture
def load_tool():
    """helpers.load_tool: ``load_tool(name)`` is the module behind tools/<name>.py."""
    return helpers.load_tool


@pytest.fixture(scope="session")
def sam3_dir(tmp_path_factory):
    """A random tiny SAM 3 and its tokenizer, saved once per session as a user's
    save_pretrained directory (read only: tests must not write into it)."""
    return helpers.save_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny")
